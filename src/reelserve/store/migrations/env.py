"""Alembic environment: runs on the connection `reelserve.store.db.upgrade` hands over."""

from __future__ import annotations

from alembic import context

from reelserve.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `reelserve migrate` (reelserve.store.db.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
