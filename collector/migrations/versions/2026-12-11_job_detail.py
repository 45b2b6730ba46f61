"""A settled job's parts in its own row: ``job.detail`` (``collector/job_details.py``).

Adding a nullable column without a default changes no row (instant on PostgreSQL). Nothing to
backfill by hand: every job reads its parts live until the collector's background refresh, or
``jobenergy db maintain``, materialises the settled ones, oldest first.

Revision ID: 0021_job_detail
Revises: 0020_job_scope_indexes
Create Date: 2026-12-11
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_job_detail"
down_revision: str | None = "0020_job_scope_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the column."""
    op.add_column("job", sa.Column("detail", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("job") as batch:
        batch.drop_column("detail")
