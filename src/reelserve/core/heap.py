"""The server's own objects out of the garbage collector's way, once a process has started.

A started API process holds a few hundred thousand objects that live as long as it does (the
app, its routes and schemas, SQLAlchemy's tables and compiled statements, pydantic's
validators). Each full collection walks them all: in the 3,000-task bench, `reelserve serve`
made 8 full collections of 107-122 ms each that freed nothing, and a status GET that met one
waited for it. `gc.freeze()` moves every object alive at the end of startup into a generation
the collector never walks; what is created afterwards is collected as before. The young
generation is then collected every `YOUNG_THRESHOLD` new objects instead of 700, so that the
objects of a task in flight mostly die young instead of being promoted and walked again (the
worker's collections in that bench: 6.5 s in all, pauses up to 262-321 ms, before; 1.8 s, up to
66 ms, after).

Only the processes' entry points (`reelserve serve`, `reelserve worker`) call it: a process
that starts many apps (the test suite) would keep every earlier app's garbage for good.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("reelserve")

YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> int:
    """Collect the garbage of startup, then freeze what is left; return how many objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    frozen = gc.get_freeze_count()
    log.info("froze %d objects alive after startup out of the garbage collector's walks", frozen)
    return frozen
