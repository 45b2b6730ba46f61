"""Factor revisions: the ``factor_change`` table.

Each factor change that rewrites stored facility energy or CO2e records its revision and the
span of hours it rewrote (``collector/factor_changes.py``); ``jobenergy slurm sync`` reads them
to rewrite the AdminComments of the jobs of that span. Changes made before this revision are
not recorded.

Revision ID: 0006_factor_change
Revises: 0005_partition_intervals
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_factor_change"
down_revision: str | None = "0005_partition_intervals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``factor_change``."""
    op.create_table(
        "factor_change",
        sa.Column(
            "revision",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hours", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_factor_change")),
    )
    op.create_index(
        "ix_factor_change_cluster_revision", "factor_change", ["cluster", "revision"]
    )


def downgrade() -> None:
    """Drop ``factor_change``."""
    op.drop_index("ix_factor_change_cluster_revision", table_name="factor_change")
    op.drop_table("factor_change")
