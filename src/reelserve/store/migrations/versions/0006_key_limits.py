"""Key limits: max running tasks, submits per minute, budget, allowed models; admin keys. And
the index the rate check reads (a key's tasks by creation time).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_running", sa.Integer, nullable=True))
        batch.add_column(sa.Column("rate_per_minute", sa.Integer, nullable=True))
        batch.add_column(sa.Column("budget", sa.Float, nullable=True))
        batch.add_column(sa.Column("models", sa.JSON, nullable=True))
        batch.add_column(sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_tasks_key_created", "tasks", ["api_key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_key_created", "tasks")
    with op.batch_alter_table("api_keys") as batch:
        for name in ("admin", "models", "budget", "rate_per_minute", "max_running"):
            batch.drop_column(name)
