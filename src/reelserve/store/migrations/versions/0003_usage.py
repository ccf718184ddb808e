"""Usage accounting: seconds of video generated per task, model and API key, with its price.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("task_id", sa.String(40), primary_key=True),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("videos", sa.Integer, nullable=False),
        sa.Column("video_seconds", sa.Float, nullable=False),
        sa.Column("has_audio", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("cost", sa.Float, nullable=False, server_default="0"),
        sa.Column("currency", sa.String(8), nullable=False, server_default="USD"),
        sa.Column("credential", sa.String(200), nullable=True),
        sa.Column("recorded_at", sa.Float, nullable=False),
    )
    op.create_index("ix_usage_key_time", "usage", ["api_key_id", "recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_key_time", "usage")
    op.drop_table("usage")
