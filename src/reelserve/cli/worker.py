"""`reelserve worker`: a worker process without the HTTP API. It claims tasks from the store
(those of `--providers` / `--models`), runs them, and stops gracefully on SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

from reelserve.cli.common import DataDir, err, settings_for, setup_logging
from reelserve.settings import Settings


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
    setup_logging(log_level)
    settings = settings_for(data_dir, device=device)
    metrics = _serve_worker_metrics(metrics_port, metrics_host)
    _run_loop(
        _run_worker(
            settings,
            concurrency,
            _split(models),
            _split(providers),
            metrics=metrics,
            remote_concurrency=remote_concurrency,
        )
    )


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it is installed (uvicorn[standard] brings it; `reelserve
    serve` runs on it too), else on asyncio's own loop. Thousands of upstream polls in flight
    spend much of the worker's core in the event loop, which uvloop runs in C."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


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
    from reelserve.core import Reelserve
    from reelserve.core.heap import freeze_startup_heap
    from reelserve.worker.runner import Worker

    service = await Reelserve.open(settings, metrics=metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    available = set(service.providers)  # route names; a provider's name stands for its routes
    kinds = {service.admission.routes.kinds.get(name, name) for name in available}
    if providers is not None and providers - available - kinds:
        missing = ", ".join(sorted(providers - available - kinds))
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
    freeze_startup_heap()
    try:
        await worker.run(stop)
    finally:
        await service.close()
