"""The `reelserve` command: serve | worker | generate | keys | tasks | migrate.

Operators script these, so the forms are fixed: `reelserve serve --host H --port P --data-dir DIR`
and `reelserve keys create (--test|--live) [--name N] --data-dir DIR`, which prints the new key
alone on the last line of standard output (its webhook signing secret on the line before).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from reelserve.cli.generate import generate_command
from reelserve.settings import Settings

if TYPE_CHECKING:
    from reelserve.service import Reelserve

T = TypeVar("T")

app = typer.Typer(
    name="reelserve",
    help="Self-hostable video-generation API server.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
tasks_app = typer.Typer(help="Inspect tasks in the store.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(tasks_app, name="tasks")
app.command("generate")(generate_command)

err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="REELSERVE_DATA_DIR",
        help="Where the database, media and secret live [default: ~/.local/share/reelserve].",
        show_default=False,
    ),
]


def _settings(data_dir: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


async def mint_key(settings: Settings, mode: str, name: str) -> str:
    return (await mint_key_with_webhook_secret(settings, mode, name))[0]


async def _using_service(settings: Settings, use: Callable[[Reelserve], Awaitable[T]]) -> T:
    """Open the service (migrating the store), run one operation on it, close it."""
    from reelserve.service import Reelserve

    service = await Reelserve.open(settings)
    try:
        return await use(service)
    finally:
        await service.close()


def _run_on_service(data_dir: Path | None, use: Callable[[Reelserve], Awaitable[T]]) -> T:
    """`_using_service` for a command: the settings of `--data-dir`, in a fresh event loop."""
    return asyncio.run(_using_service(_settings(data_dir), use))


async def mint_key_with_webhook_secret(settings: Settings, mode: str, name: str) -> tuple[str, str]:
    """A new API key and its webhook signing secret (`whsec_...`), each shown once."""
    _, secret, webhook_secret = await _using_service(
        settings,
        lambda service: service.create_key(mode, name),  # type: ignore[arg-type]
    )
    return secret, webhook_secret


def _quickstart(base: str, secret: str) -> str:
    body = json.dumps(
        {
            "model": "veo3.1-fast-official",
            "prompt": "a golden retriever running on the beach, sunset, cinematic",
            "duration": 4,
        }
    )
    return (
        f"reelserve is serving on {base} (playground: {base}/, API docs: {base}/docs)\n"
        f"A test key (runs every model on the offline sandbox) was minted for you:\n\n"
        f"  export REELSERVE_KEY={secret}\n"
        f'  curl -s {base}/v1/videos/generations -H "Authorization: Bearer $REELSERVE_KEY" '
        f"-H 'Content-Type: application/json' -d '{body}'\n"
        f'  curl -s {base}/v1/tasks/TASK_ID -H "Authorization: Bearer $REELSERVE_KEY"\n'
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Run a worker in this process.")
    ] = True,
    quickstart_key: Annotated[
        bool,
        typer.Option(
            "--quickstart-key/--no-quickstart-key",
            help="Mint a test key at start and print a ready-to-paste curl.",
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the API server (with an in-process worker) on the embedded defaults."""
    import uvicorn

    from reelserve.api.app import create_app

    _logging(log_level)
    settings = _settings(data_dir, in_process_worker=worker)
    shown_host = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown_host = "127.0.0.1"
    base = f"http://{shown_host}:{port}"
    if quickstart_key:
        secret = asyncio.run(mint_key(settings, "test", "quickstart"))
        print(_quickstart(base, secret), flush=True)
    uvicorn.run(
        create_app(settings, exit_when_stuck=True),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        proxy_headers=True,
        # Open event streams (GET /v1/tasks/{id}/events) would otherwise hold a shutdown until
        # their tasks finish: after this many seconds the remaining requests are cancelled.
        timeout_graceful_shutdown=10,
    )


@app.command("worker")
def worker_command(
    data_dir: DataDir = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Tasks run at once on providers that compute here (sandbox, local models: "
            "CPU/GPU-bound); default: worker_concurrency."
        ),
    ] = None,
    remote_concurrency: Annotated[
        int | None,
        typer.Option(
            help="Tasks held at once on providers that wait on a remote service (google_veo: "
            "a poll now and then each); default: worker_remote_concurrency."
        ),
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model ids this worker takes.")
    ] = None,
    providers: Annotated[
        str | None, typer.Option(help="Comma-separated providers this worker takes.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Torch device for local models, e.g. cuda:1 (one GPU per worker)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="REELSERVE_WORKER_METRICS_PORT",
            help="Serve this worker's Prometheus metrics (time in queue, run time, upstream "
            "errors) on this port.",
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics endpoint.")] = "0.0.0.0",
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run a worker process (no HTTP API): claims tasks from the store and runs them."""
    _logging(log_level)
    settings = _settings(data_dir, device=device)
    metrics = _serve_worker_metrics(metrics_port, metrics_host)
    asyncio.run(
        _run_worker(
            settings,
            concurrency,
            _split(models),
            _split(providers),
            metrics=metrics,
            remote_concurrency=remote_concurrency,
        )
    )


def _serve_worker_metrics(port: int | None, host: str) -> Any:
    """A worker's own metrics on `host:port` (a thread), or None without a port."""
    if port is None:
        return None
    from prometheus_client import start_http_server

    from reelserve.metrics import Metrics

    metrics = Metrics()
    start_http_server(port, addr=host, registry=metrics.registry)
    return metrics


def _split(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


async def _run_worker(
    settings: Settings,
    concurrency: int | None,
    models: set[str] | None,
    providers: set[str] | None,
    *,
    metrics: Any = None,
    remote_concurrency: int | None = None,
) -> None:
    from reelserve.service import Reelserve
    from reelserve.worker.runner import Worker

    service = await Reelserve.open(settings, metrics=metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    available = set(service.providers)
    if providers is not None and providers - available:
        missing = ", ".join(sorted(providers - available))
        err.print(f"[red]providers not available on this worker:[/] {missing}")
        raise typer.Exit(2)
    worker = Worker(
        service.worker_parts(),
        concurrency=concurrency,
        remote_concurrency=remote_concurrency,
        providers=providers if providers is not None else available,
        models=models,
        exit_when_stuck=True,
    )
    try:
        await worker.run(stop)
    finally:
        await service.close()


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema (serve and worker also do this on start)."""
    from reelserve.store.db import create_engine, current_revision, upgrade

    settings = _settings(data_dir)
    settings.ensure_dirs()

    async def _go() -> str | None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await upgrade(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database at revision {asyncio.run(_go())}")


@keys_app.command("create")
def keys_create(
    test: Annotated[bool, typer.Option("--test", help="A test key: sandbox only, free.")] = False,
    live: Annotated[bool, typer.Option("--live", help="A live key: real providers.")] = False,
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Mint an API key; prints it alone on the last line (shown once, stored hashed)."""
    if test == live:
        err.print("[red]choose exactly one of --test or --live[/]")
        raise typer.Exit(2)
    settings = _settings(data_dir)
    secret, webhook_secret = asyncio.run(
        mint_key_with_webhook_secret(settings, "test" if test else "live", name)
    )
    err.print("Store this key and its webhook signing secret now: they are shown only once.")
    print(f"webhook signing secret: {webhook_secret}")
    print(secret)


@keys_app.command("rotate-webhook-secret")
def keys_rotate_webhook_secret(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or its shown prefix.")],
    data_dir: DataDir = None,
) -> None:
    """Give a key a new webhook signing secret (printed once); the old one stops at once."""
    rotated = _run_on_service(data_dir, lambda service: service.webhooks.rotate_secret(key))
    if rotated is None:
        err.print(f"[red]no single key matches {key!r}[/]")
        raise typer.Exit(1)
    err.print(f"New webhook signing secret of {rotated[0]}; store it now: it is shown only once.")
    print(rotated[1])


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List API keys (prefixes only; secrets are never stored)."""
    table = Table("id", "prefix", "mode", "name", "created", "revoked")
    for key in _run_on_service(data_dir, lambda service: service.keys.list_keys()):
        table.add_row(
            key.id,
            key.prefix + "...",
            key.mode,
            key.name,
            _when(key.created_at),
            _when(key.revoked_at) if key.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or its shown prefix.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key (takes effect within a few seconds on running servers)."""
    revoked = _run_on_service(data_dir, lambda service: service.keys.revoke(key))
    if revoked is None:
        err.print(f"[red]no single key matches {key!r}[/]")
        raise typer.Exit(1)
    print(f"revoked {revoked.id} ({revoked.prefix}...)")


@tasks_app.command("list")
def tasks_list(
    data_dir: DataDir = None,
    status: Annotated[str | None, typer.Option(help="Only tasks in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """List the newest tasks of all keys, straight from the store."""
    import sqlalchemy as sa

    from reelserve.store.db import create_engine
    from reelserve.store.queue import TaskRecord
    from reelserve.store.tables import tasks

    settings = _settings(data_dir)

    async def _go() -> list[TaskRecord]:
        engine = create_engine(settings.resolved_database_url)
        try:
            query = sa.select(tasks).order_by(tasks.c.id.desc()).limit(limit)
            if status:
                query = query.where(tasks.c.status == status)
            async with engine.connect() as conn:
                return [TaskRecord.from_row(r) for r in (await conn.execute(query)).all()]
        finally:
            await engine.dispose()

    table = Table("id", "status", "progress", "model", "provider", "created", "error")
    for t in asyncio.run(_go()):
        table.add_row(
            t.id,
            t.status.value,
            f"{t.progress}%",
            t.model,
            t.provider,
            _when(t.created_at),
            t.error_code or "",
        )
    Console().print(table)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    app()
