"""Cancel requests of running tasks, read in one step: a partial index holding only the tasks
whose client asked to cancel, by status (store/queue.py, `cancel_requests`), so a worker with
ten thousand tasks in flight finds the processing ones without touching the others.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen here as in store/tables.py (migrations never import it).
_WHERE = "cancel_requested"


def upgrade() -> None:
    op.create_index(
        "ix_tasks_cancel_requested",
        "tasks",
        ["status", "lease_owner"],
        sqlite_where=sa.text(_WHERE),
        postgresql_where=sa.text(_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_cancel_requested", "tasks")
