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
66 ms, after). The middle generation is collected every 3 young collections instead of 10:
each walks what the young ones promoted since the last, so that with 1,000 Veo tasks in flight
in `reelserve serve` on SQLite its pauses, which a submit that meets one waits for, were 20-42 ms
(8 in 110 s) instead of 50-75 ms (3 in 110 s), with no full collection in either run.

Only the processes' entry points (`reelserve serve`, `reelserve worker`) call it: a process
that starts many apps (the test suite) would keep every earlier app's garbage for good.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("reelserve")

YOUNG_THRESHOLD = 10_000
MIDDLE_THRESHOLD = 3  # young collections per collection of the middle generation


def freeze_startup_heap() -> int:
    """Collect the garbage of startup, then freeze what is left; return how many objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, gc.get_threshold()[2])
    frozen = gc.get_freeze_count()
    log.info("froze %d objects alive after startup out of the garbage collector's walks", frozen)
    return frozen
