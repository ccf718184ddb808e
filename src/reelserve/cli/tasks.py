"""`reelserve tasks list`: the newest tasks of every key, read straight from the store (no
server needed), for an operator's look at the queue."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from reelserve.cli.common import DataDir, settings_for, when

if TYPE_CHECKING:
    from reelserve.store.queue import TaskRecord

tasks_app = typer.Typer(help="Inspect tasks in the store.", no_args_is_help=True)


@tasks_app.command("list")
def tasks_list(
    data_dir: DataDir = None,
    status: Annotated[str | None, typer.Option(help="Only tasks in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """List the newest tasks of all keys, straight from the store."""
    from reelserve.store.db import create_engine
    from reelserve.store.queue import TaskQueue

    settings = settings_for(data_dir)

    async def _go() -> list[TaskRecord]:
        engine = create_engine(settings.resolved_database_url)
        queue = TaskQueue(engine)
        try:
            return await queue.newest(status=status, limit=limit)
        finally:
            queue.close()
            await engine.dispose()

    table = Table("id", "status", "progress", "model", "provider", "created", "error")
    for t in asyncio.run(_go()):
        table.add_row(
            t.id,
            t.status.value,
            f"{t.progress}%",
            t.model,
            t.provider,
            when(t.created_at),
            t.error_code or "",
        )
    Console().print(table)
