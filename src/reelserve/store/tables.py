"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; this is what code uses."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("mode", sa.String(8), nullable=False),  # live | test
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    # The Standard Webhooks signing secret, sealed with the server's secret (store/webhooks.py).
    sa.Column("webhook_secret", sa.Text, nullable=True),
    # Limits (domain/limits.py); null is no limit. `models`: a JSON list of allowed model ids.
    sa.Column("max_running", sa.Integer, nullable=True),
    sa.Column("rate_per_minute", sa.Integer, nullable=True),
    sa.Column("budget", sa.Float, nullable=True),  # in the price currency
    sa.Column("models", sa.JSON, nullable=True),
    # An admin key only uses /v1/admin/*; it cannot submit or read tasks.
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
)

# The predicate of the partial index of cancel requests, written out so that a query can repeat
# it exactly (SQLite uses a partial index only for a WHERE that contains its terms as written).
CANCEL_REQUESTED = "cancel_requested"

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("checkpoint", sa.JSON, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("estimated_time", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(80), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("files_expired_at", sa.Float, nullable=True),
    # Times a stopping worker handed the task back (store/queue.py: only the first few are free).
    sa.Column("releases", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_tasks_queue", "status", "created_at"),
    sa.Index("ix_tasks_key_queue", "status", "api_key_id", "created_at"),  # one key's queue
    sa.Index("ix_tasks_retention", "finished_at"),
    sa.Index("ix_tasks_owner", "api_key_id", "id"),
    sa.Index("ix_tasks_key_created", "api_key_id", "created_at"),  # the rate check
    # Tasks whose client asked to cancel, and only those, by status (TaskQueue.cancel_requests).
    sa.Index(
        "ix_tasks_cancel_requested",
        "status",
        "lease_owner",
        sqlite_where=sa.text(CANCEL_REQUESTED),
        postgresql_where=sa.text(CANCEL_REQUESTED),
    ),
    sa.Index("ux_tasks_idempotency", "api_key_id", "idempotency_key", unique=True),
)

# One row per key a claim has served: when it was last given a task. The claim takes the keys
# with runnable work least recently served first (store/task_claims.py); on PostgreSQL a claim
# locks the rows of the keys it serves, so that a key's running count holds across workers.
queue_keys = sa.Table(
    "queue_keys",
    metadata,
    sa.Column("api_key_id", sa.String(40), primary_key=True),
    sa.Column("served_at", sa.Float, nullable=False),
)

# One row per finished task that produced video: what it cost, for `GET /v1/usage`.
usage = sa.Table(
    "usage",
    metadata,
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
    sa.Index("ix_usage_key_time", "api_key_id", "recorded_at"),
)

# The ledger (store/ledger.py): one `reserve` row per task at submit, closed by one `settle` (what
# was charged) or one `release` (nothing charged), each written in the transaction of the task's
# state change. `hold` is the change in the key's reserved sum (+R at reserve, -R when closed),
# `charge` what the key spent (settle only): a key's reserved and spent are their sums.
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("task_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # reserve | settle | release
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("hold", sa.Float, nullable=False, server_default="0"),
    sa.Column("charge", sa.Float, nullable=False, server_default="0"),
    sa.Column("currency", sa.String(8), nullable=False, server_default="USD"),
    sa.Column("samples", sa.Integer, nullable=False, server_default="1"),  # reserved videos
    sa.Column("videos", sa.Integer, nullable=False, server_default="0"),  # delivered (settle)
    sa.Column("test", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    # One entry of each kind per task: a write that ran twice cannot double it.
    sa.UniqueConstraint("task_id", "kind", name="ux_ledger_task_kind"),
    sa.Index("ix_ledger_key", "api_key_id", "id"),
)

# One row per task submitted with a webhook_url: its final-state notification (store/webhooks.py).
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # msg_<ulid>: the webhook-id header
    sa.Column("task_id", sa.String(40), nullable=False, unique=True),
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("base_url", sa.Text, nullable=False),
    # waiting (task not finished) | pending | delivered | failed (gave up) | refused
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("event", sa.String(32), nullable=True),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Column("lease_owner", sa.String(80), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(40), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration", sa.Float, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered | failed | refused
    sa.UniqueConstraint("delivery_id", "attempt", name="ux_webhook_attempts_number"),
)
