"""Model leaderboards of the last 24 h, 7 d and 30 d, materialised: ``rollup_board_window``;
and the summaries per group over all time and those windows: ``rollup_summary``.

Filled by the roll-up refresh (``collector/rollups.py``) beside the all-time leaderboard; their
``rollup_state`` rows (``board_window``, ``summary``) say when the windows end. Nothing to
backfill: the first refresh after the upgrade computes them.

Revision ID: 0019_rollup_board_window
Revises: 0018_batch_key_received_at
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_rollup_board_window"
down_revision: str | None = "0018_batch_key_received_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables."""
    op.create_table(
        "rollup_board_window",
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("facility_uj", sa.Float(), nullable=False),
        sa.Column("co2e_ug", sa.Float(), nullable=False),
        sa.Column("gpu_s", sa.Float(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=True),
        sa.Column("sampled_uj", sa.BigInteger(), nullable=True),
        sa.Column("median_uj", sa.Float(), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("period", "scope", "model", "phase",
                                name=op.f("pk_rollup_board_window")),
    )


    op.create_table(
        "rollup_summary",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.Identity(always=False), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("group_by", sa.String(length=16), nullable=False),
        sa.Column("group", sa.String(length=255), nullable=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("energy_uj", sa.Float(), nullable=False),
        sa.Column("gpu_uj", sa.Float(), nullable=False),
        sa.Column("facility_uj", sa.Float(), nullable=False),
        sa.Column("co2e_ug", sa.Float(), nullable=False),
        sa.Column("gpu_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_summary")),
    )
    op.create_index("ix_rollup_summary_lookup", "rollup_summary",
                    ["period", "scope", "phase", "group_by"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_rollup_summary_lookup", table_name="rollup_summary")
    op.drop_table("rollup_summary")
    op.drop_table("rollup_board_window")
