"""The threads a worker probes, thumbnails, checks and encodes clips in, at a lower CPU priority.

Media work is batch work: ten thousand remote tasks finishing within minutes make ten thousand
probes and thumbnails, and a local model's clip is encoded in a thread too. Run beside the API
(in `reelserve serve`, or on the same machine), it competes for the same cores as status reads
and submits, and a client's request then waits in the CPU's run queue behind a thumbnail. On
Linux each thread has its own niceness, so these threads can yield to the event loops (the
API's, and the worker's own lease renewals and polls) without slowing anything when the cores
are free: a nice thread only loses where something else wants the CPU.

`in_media_thread` is `asyncio.to_thread` on this pool. `set_media_niceness` is called by the
worker when it starts (`worker_media_nice`); threads already started keep the niceness they
were given (an unprivileged thread cannot lower its niceness again), so a change starts a new
pool. Elsewhere than Linux niceness belongs to the whole process, and the pool runs at the
process's own priority.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("reelserve.media")

# Where setpriority(PRIO_PROCESS, 0) changes the calling thread alone.
PER_THREAD_NICENESS = sys.platform == "linux"
MAX_NICENESS = 19

_lock = threading.Lock()
_niceness = 0
_pool: ThreadPoolExecutor | None = None


def set_media_niceness(niceness: int) -> None:
    """Run media work from now on `niceness` steps below the priority of the thread that
    starts the pool's threads (0: the same priority)."""
    global _niceness, _pool
    if not 0 <= niceness <= MAX_NICENESS:
        raise ValueError(f"niceness must be 0 to {MAX_NICENESS}, not {niceness}")
    with _lock:
        if niceness == _niceness:
            return
        _niceness = niceness
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)  # its running jobs finish; new ones go to the new pool


async def in_media_thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(*args, **kwargs)` in a media thread; the context variables go with it, as with
    `asyncio.to_thread`."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return await loop.run_in_executor(_executor(), call)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=min(32, (os.cpu_count() or 1) + 4),
                thread_name_prefix="reelserve-media",
                initializer=_lower_priority,
                initargs=(_niceness,),
            )
        return _pool


def _lower_priority(niceness: int) -> None:
    if niceness <= 0 or not PER_THREAD_NICENESS:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    except OSError as exc:  # a sandbox that forbids it: run at the normal priority
        log.warning("media threads run at the normal CPU priority: %s", exc)
