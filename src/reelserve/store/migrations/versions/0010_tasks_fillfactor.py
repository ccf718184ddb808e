"""Room in the task table's pages for updates in place (PostgreSQL): `fillfactor` 60.

A worker renews the lease of every task it runs every `lease_seconds / 3`: with ten thousand in
flight, ten thousand row updates every ten seconds. A lease, its progress and its checkpoint
are in no index, so PostgreSQL can write each new row version on the same page and leave the
indexes alone (a HOT update), but only where the page has room. Packed full (the default), 96%
of the renewals of a 10,000-task table were not HOT: each wrote an entry in all eight indexes,
the indexes bloated, and a renewal of the 10,000 went from 0.4 s to 3.5-4 s within three rounds
(the planner, misled by the bloat, probing the wrong index). With 40% of each page free, 88%
were HOT and a renewal stayed at 0.3-0.4 s. Existing pages keep their packing until rewritten
(a `VACUUM FULL`, or as rows are updated over time); new pages are filled to 60%. SQLite
updates in place and has no such setting: nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FILLFACTOR = 60


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tasks SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE tasks RESET (fillfactor)")
