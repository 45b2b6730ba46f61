"""Per-node hourly energy: ``node_energy_hour``, backfilled from the stored raw intervals.

``(cluster, node, hour_at, component)`` → ``measured_uj``, ``unattributed_uj``, added to at
ingest (``collector/node_hours.py``); node and cluster series of whole hours read it instead
of ``energy_interval`` and so outlive the raw intervals' retention.

Backfill: node by node, the rows inside one UTC hour summed by a GROUP BY in SQL
(``date_trunc`` on PostgreSQL, the text's hour on SQLite), the rows crossing an hour edge
split exactly in Python, each alone, by largest remainder (``core/carbon.py:
split_over_hours``, the split ingest uses), so the backfilled hours are those ingest would
have written. An exact largest-remainder split in SQL would need window functions over each
crossing row's hours; the crossing rows are few (one per source and share per hour), so
Python does it. Hours whose raw intervals retention dropped before this upgrade are not
rebuilt (``node_energy`` keeps their totals). The backfill reads each node's intervals once
by ``(cluster, node, start_at)``; the table is written while the upgrade holds no lock
on ``energy_interval`` beyond reading (ingest may wait on the new table's creation only).

Revision ID: 0015_node_energy_hour
Revises: 0014_job_slurm_ids
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from jobenergy.collector.node_hours import backfill

revision: str = "0015_node_energy_hour"
down_revision: str | None = "0014_job_slurm_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_MAX = 2**63 - 1


def upgrade() -> None:
    """Create the table and its cluster index; backfill from ``energy_interval``."""
    op.create_table(
        "node_energy_hour",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("hour_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("measured_uj", sa.BigInteger(), nullable=False),
        sa.Column("unattributed_uj", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(f"measured_uj >= 0 AND measured_uj <= {BIGINT_MAX}",
                           name=op.f("ck_node_energy_hour_measured_uj_range")),
        sa.CheckConstraint(f"unattributed_uj >= 0 AND unattributed_uj <= {BIGINT_MAX}",
                           name=op.f("ck_node_energy_hour_unattributed_uj_range")),
        sa.PrimaryKeyConstraint("cluster", "node", "hour_at", "component",
                                name=op.f("pk_node_energy_hour")),
    )
    op.create_index("ix_node_energy_hour_cluster_hour_at", "node_energy_hour",
                    ["cluster", "hour_at"], postgresql_include=["component", "measured_uj"])
    backfill(op.get_bind())


def downgrade() -> None:
    """Drop the table."""
    op.drop_index("ix_node_energy_hour_cluster_hour_at", table_name="node_energy_hour")
    op.drop_table("node_energy_hour")
