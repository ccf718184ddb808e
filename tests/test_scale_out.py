"""Scale-out on PostgreSQL: 2 API processes and 4 worker processes share one database.

40 tasks are submitted through both APIs; one worker is killed with SIGKILL half-way, while it
holds leases. Every task completes exactly once: none lost (all completed), none run to
completion twice (each task's completion appears once in the workers' logs, and the database
agrees), and the killed worker's tasks are finished by the others. `python -m bench.scale_out`
runs the same `run()` with 500 tasks and prints its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import scale_out

from tests.databases import postgres_database

TASKS = 40  # enough for 8 renders in flight and a kill half-way; bench/scale_out.py does 500

pytestmark = pytest.mark.slow


def test_many_processes_one_database(tmp_path: Path) -> None:
    with postgres_database() as url:
        outcome = scale_out.run(url, tmp_path, TASKS, apis=2, workers=4, concurrency=2)
    assert len(set(outcome.ids)) == TASKS
    assert outcome.counts == {"completed": TASKS}  # none lost, none failed
    assert set(outcome.completions) == set(outcome.ids)
    assert max(outcome.completions.values()) == 1  # none completed twice
    assert outcome.orphans, "worker 0 was killed holding no lease"
    for task_id in outcome.orphans:  # the killed worker's tasks were resumed elsewhere
        assert outcome.attempts[task_id] >= 2
        assert outcome.completed_by_killed[task_id] == 0
    assert all(a >= 1 for a in outcome.attempts.values())
    # both API processes see every task
    assert outcome.listed == [(TASKS // 2, True), (TASKS // 2, True)]
    assert outcome.returncodes == [0, 0, 0]  # SIGTERM stops the other workers cleanly
    assert outcome.problems() == []
    lines = scale_out.report(outcome, apis=2, workers=4, concurrency=2)
    assert lines[-1] == "exactly once: yes"
    assert f"killed worker held {len(outcome.orphans)} leases" in lines[-2]
