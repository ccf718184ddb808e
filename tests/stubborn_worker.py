"""A worker process whose provider blocks in a thread without ever checking for a stop.

It stands in for a provider with a bug (or an input that makes one step take hours): the real
`Worker` runs it, so the tests can show what the watchdog does about it. Run as a script, with
the same `REELSERVE_*` environment as `reelserve worker`; `tests/test_watchdog.py` imports
`StubbornProvider` for the in-process case.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from reelserve.providers.base import Clip, ProviderBase


class StubbornProvider(ProviderBase):
    """Reports a little progress, then blocks in a thread until `release` is set (or an hour
    passes), never calling `ctx.check_cancelled()`."""

    name = "sandbox"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    async def run(self, spec: Any, ctx: Any) -> list[Clip]:
        ctx.report_progress(0.1)
        await asyncio.to_thread(self._block)
        return []

    def _block(self) -> None:
        self.started.set()
        self.release.wait(3600)


async def main() -> None:
    from reelserve.core import Reelserve
    from reelserve.settings import Settings
    from reelserve.worker.runner import Worker

    service = await Reelserve.open(Settings())
    service.providers["sandbox"] = StubbornProvider()
    worker = Worker(service.worker_parts(), concurrency=1, exit_when_stuck=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await worker.run(stop)
    await service.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
