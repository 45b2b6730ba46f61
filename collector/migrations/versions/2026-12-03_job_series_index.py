"""Index ``energy_interval`` by job: ``(cluster, job_id, start_at)`` where ``job_id`` is set.

A job's power series (``GET /api/v1/jobs/{job_id}/series``, ``api/series_queries.py``) reads
the job's intervals over a time range: an index range scan of the job's rows, however many
other jobs and nodes share the months. The node's own rows (``job_id`` NULL) are left out,
which the series never read by job.

On PostgreSQL the index is created on the partitioned parent, which creates it on every
partition (and on those made later). That takes a lock blocking writes while it builds; on a
large existing database, build it ahead per partition with ``CREATE INDEX CONCURRENTLY`` and
attach those (PostgreSQL's documented procedure for partitioned indexes) before upgrading.

Revision ID: 0013_interval_job_index
Revises: 0012_rollups
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_interval_job_index"
down_revision: str | None = "0012_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_energy_interval_cluster_job_id_start_at"


def upgrade() -> None:
    """Create the index (on PostgreSQL's parent: every partition gets it)."""
    op.create_index(INDEX, "energy_interval", ["cluster", "job_id", "start_at"],
                    postgresql_where=sa.text("job_id IS NOT NULL"),
                    sqlite_where=sa.text("job_id IS NOT NULL"))


def downgrade() -> None:
    """Drop the index."""
    op.drop_index(INDEX, table_name="energy_interval")
