"""Retention of raw intervals: the ``interval_retention`` table.

``jobenergy db maintain --retention-days N`` drops whole monthly ``energy_interval``
partitions; it records here where the retained intervals start, so that ingest refuses a batch
reaching back before it (it could not be checked for double counting against dropped rows).

Revision ID: 0011_interval_retention
Revises: 0010_job_queries
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_interval_retention"
down_revision: str | None = "0010_job_queries"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "interval_retention",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kept_from", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_interval_retention")),
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("interval_retention")
