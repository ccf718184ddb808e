"""The ledger: one row per reserve, settle and release of a task's cost (store/ledger.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("task_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("hold", sa.Float, nullable=False, server_default="0"),
        sa.Column("charge", sa.Float, nullable=False, server_default="0"),
        sa.Column("currency", sa.String(8), nullable=False, server_default="USD"),
        sa.Column("samples", sa.Integer, nullable=False, server_default="1"),
        sa.Column("videos", sa.Integer, nullable=False, server_default="0"),
        sa.Column("test", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("task_id", "kind", name="ux_ledger_task_kind"),
    )
    op.create_index("ix_ledger_key", "ledger", ["api_key_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_key", "ledger")
    op.drop_table("ledger")
