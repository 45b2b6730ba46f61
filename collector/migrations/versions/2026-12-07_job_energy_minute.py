"""Per-job minute series that outlive the raw intervals: the ``job_energy_minute`` table.

Written by ``jobenergy db maintain`` when retention drops a month of ``energy_interval``
(``collector/job_minutes.py``), never at ingest. Nothing is backfilled: months dropped before
this upgrade cannot be rebuilt, so where the raw intervals already start (``interval_retention``
row ``energy_interval``), if anywhere, is recorded as where the minutes start (row
``job_energy_minute_from``); a job series before it still answers from ``job_energy_hour``.
On SQLite (no partitions, no retention) the table stays empty.

Revision ID: 0017_job_energy_minute
Revises: 0016_budgets
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_job_energy_minute"
down_revision: str | None = "0016_budgets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_MAX = 2**63 - 1


def upgrade() -> None:
    """Create the table; record where the minutes start when retention already dropped some."""
    op.create_table(
        "job_energy_minute",
        sa.Column("minute_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.CheckConstraint(f"energy_uj >= 0 AND energy_uj <= {BIGINT_MAX}",
                           name=op.f("ck_job_energy_minute_energy_uj_range")),
        sa.PrimaryKeyConstraint("cluster", "job_id", "minute_at", "node", "component", "source",
                                name=op.f("pk_job_energy_minute")),
    )
    # Same statement on both backends; interval_retention.kept_from is UTC either way.
    op.execute(
        "INSERT INTO interval_retention (name, kept_from) "
        "SELECT 'job_energy_minute_from', kept_from FROM interval_retention "
        "WHERE name = 'energy_interval'"
    )


def downgrade() -> None:
    """Drop the table and its markers (the minutes of dropped months go with it)."""
    op.execute("DELETE FROM interval_retention WHERE name IN ('job_energy_minute', "
               "'job_energy_minute_from')")
    op.drop_table("job_energy_minute")
