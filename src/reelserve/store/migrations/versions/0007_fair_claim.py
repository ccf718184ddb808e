"""Fair claims across keys: the index a claim reads one key's queue by (status, api_key_id,
created_at), and `queue_keys`, when each key was last served (store/task_claims.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_key_queue", "tasks", ["status", "api_key_id", "created_at"])
    op.create_table(
        "queue_keys",
        sa.Column("api_key_id", sa.String(40), primary_key=True),
        sa.Column("served_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queue_keys")
    op.drop_index("ix_tasks_key_queue", "tasks")
