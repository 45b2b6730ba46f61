"""The all-time model leaderboard, materialised: ``rollup_board_total``, ``rollup_state``.

See ``collector/rollups.py``: the leaderboard over all time is computed whole in the background
and read from ``rollup_board_total``; ``rollup_state`` says from when. ``ix_job_updated_at``
tells whether any job changed since.

Revision ID: 0012_rollups
Revises: 0011_interval_retention
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_rollups"
down_revision: str | None = "0011_interval_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables (the first refresh fills them) and the index."""
    op.create_table(
        "rollup_board_total",
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("facility_uj", sa.Float(), nullable=False),
        sa.Column("co2e_ug", sa.Float(), nullable=False),
        sa.Column("gpu_s", sa.Float(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=True),
        sa.Column("sampled_uj", sa.BigInteger(), nullable=True),
        sa.Column("median_uj", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "model", "phase", name=op.f("pk_rollup_board_total")),
    )
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rollup_state")),
    )
    op.create_index("ix_job_updated_at", "job", ["updated_at"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_job_updated_at", table_name="job")
    op.drop_table("rollup_state")
    op.drop_table("rollup_board_total")
