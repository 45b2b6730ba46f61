"""Index jobs by uid and by account, in the list order: what a user's PrivateData scope reads.

A user (``private_data`` holding ``jobs``) reads the jobs they own by name, those they own by
uid (a job whose Slurm events have not named its user yet), and those of the accounts they
coordinate (``api/job_filters.py`` ``visible_parts``). Only the first had an index, so every
read by a user who authenticates with a uid (MUNGE) was a scan of every job: counting a list's
``total`` read the whole table, and a page for a user with no recent jobs read the list-order
index to its end (265 ms at 1 M jobs, measured; 2 s at 10 M). With these, each part of the
scope is an index range in the list's order (``ix_job_user_start``'s shape), and counts and
summaries are index-only scans of the caller's rows.

On a large existing database, build them first, instead of holding the job table's write
lock while they build (this migration then finds them and leaves them: ``IF NOT EXISTS``)::

    CREATE INDEX CONCURRENTLY ix_job_uid_start
        ON job (uid, "user", start_at DESC NULLS LAST, cluster, job_id);
    CREATE INDEX CONCURRENTLY ix_job_account_start
        ON job (account, start_at DESC NULLS LAST, cluster, job_id)
        INCLUDE ("user", uid, energy_uj, gpu_uj, facility_uj, co2e_ug, gpu_s);

Revision ID: 0020_job_scope_indexes
Revises: 0019_rollup_board_window
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_job_scope_indexes"
down_revision: str | None = "0019_rollup_board_window"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Name -> the columns before the list's order, and those included (PostgreSQL). By uid, then
#: user: a uid's jobs without a name are one range in the list's order, those under another
#: name two (empty) ranges. An account's with its jobs' owners and what a summary sums (as
#: ix_job_user_totals): a coordinator's count and summary of the others' jobs are index-only.
INDEXES = {
    "ix_job_uid_start": (("uid", "user"), []),
    "ix_job_account_start": (("account",), ["user", "uid", "energy_uj", "gpu_uj", "facility_uj",
                                            "co2e_ug", "gpu_s"]),
}


def _start_desc() -> sa.TextClause:
    # As ix_job_user_start (0010_job_queries): SQLite takes no NULLS LAST in an index.
    if op.get_bind().dialect.name == "postgresql":
        return sa.text("start_at DESC NULLS LAST")
    return sa.text("start_at DESC")


def upgrade() -> None:
    """Create the two indexes unless they were built ahead (an INVALID one, left by a
    ``CREATE INDEX CONCURRENTLY`` that failed, is dropped and built again: the planner never
    uses it)."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        invalid = bind.execute(sa.text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'job'::regclass AND NOT i.indisvalid AND c.relname = ANY(:names)"
        ), {"names": list(INDEXES)}).scalars().all()
        for name in invalid:
            op.drop_index(name, table_name="job")
    for name, (columns, include) in INDEXES.items():
        op.create_index(name, "job", [*columns, _start_desc(), "cluster", "job_id"],
                        postgresql_include=include, if_not_exists=True)


def downgrade() -> None:
    """Drop them."""
    for name in INDEXES:
        op.drop_index(name, table_name="job")
