"""Indexes in the order of job lists, for keyset pagination.

``GET /api/v1/jobs`` lists jobs newest start first, jobs without a start last, then by
(cluster, job_id). Both indexes hold that order, so that a page (after a cursor, or the first)
is an index range scan of its rows, however many jobs match:

- ``ix_job_user_start`` (``user``, then the order): a user's jobs.
- ``ix_job_start_order`` (the order): every job, and the jobs of a cluster (clusters are few).
  It replaces ``ix_job_start_at``, which nothing else reads: ascending with NULLs last, it
  cannot serve ``start_at DESC NULLS LAST``.

PostgreSQL sorts NULLs first in a descending index unless told; SQLite sorts them lowest (last
when descending) and takes no ``NULLS LAST`` in an index.

Revision ID: 0010_job_queries
Revises: 0009_auth
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_job_queries"
down_revision: str | None = "0009_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _start_desc() -> sa.TextClause:
    if op.get_bind().dialect.name == "postgresql":
        return sa.text("start_at DESC NULLS LAST")
    return sa.text("start_at DESC")


def upgrade() -> None:
    """Create the list-order indexes; drop ``ix_job_start_at``."""
    op.create_index("ix_job_user_start", "job", ["user", _start_desc(), "cluster", "job_id"])
    op.create_index("ix_job_start_order", "job", [_start_desc(), "cluster", "job_id"])
    op.drop_index("ix_job_start_at", table_name="job")


def downgrade() -> None:
    """Restore ``ix_job_start_at``; drop the list-order indexes."""
    op.create_index("ix_job_start_at", "job", ["start_at"])
    op.drop_index("ix_job_start_order", table_name="job")
    op.drop_index("ix_job_user_start", table_name="job")
