"""Energy per Slurm job step: the ``job_step_energy`` table.

Filled at ingest from the agents' per-step CPU time (``JobSample.step_cpu_us``); jobs stored
before this revision have no steps (the API shows an empty list).

Revision ID: 0004_step_energy
Revises: 0003_leaderboard_indexes
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_step_energy"
down_revision: str | None = "0003_leaderboard_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_MAX = 2**63 - 1


def upgrade() -> None:
    """Create ``job_step_energy``."""
    op.create_table(
        "job_step_energy",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            f"energy_uj >= 0 AND energy_uj <= {BIGINT_MAX}",
            name=op.f("ck_job_step_energy_energy_uj_range"),
        ),
        sa.PrimaryKeyConstraint(
            "cluster", "job_id", "step", "component", name=op.f("pk_job_step_energy")
        ),
    )


def downgrade() -> None:
    """Drop ``job_step_energy``."""
    op.drop_table("job_step_energy")
