"""Retention: when a finished task's files were deleted by the sweeper.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("files_expired_at", sa.Float, nullable=True))
    op.create_index("ix_tasks_retention", "tasks", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_retention", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("files_expired_at")
