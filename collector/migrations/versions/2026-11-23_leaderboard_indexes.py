"""Covering indexes for the leaderboards and summaries.

``ix_job_user_totals`` replaces ``ix_job_user``: on PostgreSQL it carries the summed columns,
so ``GET /api/v1/summary?group_by=user`` is a parallel index-only GroupAggregate with no sort.
``ix_job_cluster_model`` serves leaderboards filtered by cluster (and phase): an index-only
scan already ordered by model within (cluster, phase).

Revision ID: 0003_leaderboard_indexes
Revises: 0002_carbon
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_leaderboard_indexes"
down_revision: str | None = "0002_carbon"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the covering indexes; drop the plain index on ``user`` they make redundant."""
    op.create_index(
        "ix_job_user_totals", "job", ["user"],
        postgresql_include=["energy_uj", "gpu_uj", "facility_uj", "co2e_ug", "gpu_s"],
    )
    op.drop_index("ix_job_user", table_name="job")
    op.create_index(
        "ix_job_cluster_model", "job", ["cluster", "phase", "model", "energy_uj"],
        postgresql_include=["facility_uj", "co2e_ug", "gpu_s", "samples"],
        postgresql_where=sa.text("model IS NOT NULL"),
    )


def downgrade() -> None:
    """Restore the plain index on ``user``; drop the covering ones."""
    op.drop_index("ix_job_cluster_model", table_name="job")
    op.create_index("ix_job_user", "job", ["user"])
    op.drop_index("ix_job_user_totals", table_name="job")
