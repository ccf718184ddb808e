"""`reelserve serve` (the API server, with an in-process worker by default) and `reelserve
migrate` (the schema alone).

`serve --host H --port P --data-dir DIR` is a fixed form: operators script it. With
`--quickstart-key` (the default) it mints a test key and prints a ready-to-paste curl first.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from reelserve.cli.common import DataDir, settings_for, setup_logging
from reelserve.cli.keys import mint_key


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

    setup_logging(log_level)
    settings = settings_for(data_dir, in_process_worker=worker)
    shown_host = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown_host = "127.0.0.1"
    base = f"http://{shown_host}:{port}"
    if quickstart_key:
        secret = asyncio.run(mint_key(settings, "test", "quickstart"))
        print(_quickstart(base, secret), flush=True)
    uvicorn.run(
        create_app(settings, exit_when_stuck=True, freeze_heap=True),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        proxy_headers=True,
        # Open event streams (GET /v1/tasks/{id}/events) would otherwise hold a shutdown until
        # their tasks finish: after this many seconds the remaining requests are cancelled.
        timeout_graceful_shutdown=10,
    )


def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema (serve and worker also do this on start)."""
    from reelserve.store.db import create_engine, current_revision, upgrade

    settings = settings_for(data_dir)
    settings.ensure_dirs()

    async def _go() -> str | None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await upgrade(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database at revision {asyncio.run(_go())}")
