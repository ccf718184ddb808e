"""What every command shares: the `--data-dir` option, the settings it selects, logging to
standard error, and running one operation on an opened service."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from reelserve.settings import Settings

if TYPE_CHECKING:
    from reelserve.core import Reelserve

T = TypeVar("T")

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


def settings_for(data_dir: Path | None, **overrides: Any) -> Settings:
    """The settings of a command: `--data-dir` and the options it was given over the
    environment and the defaults."""
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)
    except ValidationError as exc:
        # A bad setting stops the command before it does anything, saying which and why.
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            cause = error.get("ctx", {}).get("error")
            message = str(cause) if cause is not None else error["msg"]
            if not message.startswith(where):
                message = f"{where}: {message}"
            # Plain text: a terminal-wide wrap would split the setting's name from its value.
            print(f"invalid setting {message}", file=sys.stderr)
        raise typer.Exit(2) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if logging.getLogger().level > logging.DEBUG:
        # httpx logs every request at INFO: thousands of upstream polls a second would bury the
        # tasks' own lines (and cost the worker's loop a log record each). `--log-level debug`
        # shows them.
        logging.getLogger("httpx").setLevel(logging.WARNING)


async def using_service(settings: Settings, use: Callable[[Reelserve], Awaitable[T]]) -> T:
    """Open the service (migrating the store), run one operation on it, close it."""
    from reelserve.core import Reelserve

    service = await Reelserve.open(settings)
    try:
        return await use(service)
    finally:
        await service.close()


def run_on_service(data_dir: Path | None, use: Callable[[Reelserve], Awaitable[T]]) -> T:
    """`using_service` for a command: the settings of `--data-dir`, in a fresh event loop."""
    return asyncio.run(using_service(settings_for(data_dir), use))


def when(ts: float | None) -> str:
    """A Unix time as the tables show it (UTC)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
