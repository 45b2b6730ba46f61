"""Initial collector schema.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_MAX = 2**63 - 1


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _range_check(column: str, table: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        f"{column} >= 0 AND {column} <= {BIGINT_MAX}", name=op.f(f"ck_{table}_{column}_range")
    )


def upgrade() -> None:
    """Create the ingest, totals and job tables."""
    op.create_table(
        "ingested_batch",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("intervals", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "cluster", "node", "boot_id", "seq", name=op.f("pk_ingested_batch")
        ),
    )
    op.create_table(
        "energy_interval",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("start_at", _utc(), nullable=False),
        sa.Column("end_at", _utc(), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_energy_interval")),
    )
    op.create_index(
        "ix_energy_interval_cluster_node_start_at",
        "energy_interval",
        ["cluster", "node", "start_at"],
    )
    op.create_table(
        "job_energy",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("estimated_uj", sa.BigInteger(), nullable=False),
        sa.Column("intervals", sa.BigInteger(), nullable=False),
        sa.Column("covered_s", sa.Float(), nullable=False),
        sa.Column("first_at", _utc(), nullable=False),
        sa.Column("last_at", _utc(), nullable=False),
        sa.Column("wraps", sa.Integer(), nullable=False),
        sa.Column("resets", sa.Integer(), nullable=False),
        sa.Column("device_name", sa.String(length=128), nullable=True),
        _range_check("energy_uj", "job_energy"),
        _range_check("estimated_uj", "job_energy"),
        sa.PrimaryKeyConstraint(
            "cluster", "job_id", "node", "component", "source", name=op.f("pk_job_energy")
        ),
    )
    op.create_table(
        "node_energy",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("measured_uj", sa.BigInteger(), nullable=False),
        sa.Column("unattributed_uj", sa.BigInteger(), nullable=False),
        sa.Column("intervals", sa.BigInteger(), nullable=False),
        sa.Column("first_at", _utc(), nullable=False),
        sa.Column("last_at", _utc(), nullable=False),
        _range_check("measured_uj", "node_energy"),
        _range_check("unattributed_uj", "node_energy"),
        sa.PrimaryKeyConstraint(
            "cluster", "node", "component", "source", name=op.f("pk_node_energy")
        ),
    )
    op.create_table(
        "job",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=True),
        sa.Column("uid", sa.BigInteger(), nullable=True),
        sa.Column("account", sa.String(length=64), nullable=True),
        sa.Column("partition", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("nodes", _json(), nullable=True),
        sa.Column("gpus", _json(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("exit_code", sa.String(length=16), nullable=True),
        sa.Column("tags", _json(), nullable=True),
        sa.Column("start_at", _utc(), nullable=True),
        sa.Column("end_at", _utc(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "job_id", name=op.f("pk_job")),
    )
    op.create_index("ix_job_job_id", "job", ["job_id"])
    op.create_index("ix_job_start_at", "job", ["start_at"])
    op.create_index("ix_job_user", "job", ["user"])


def downgrade() -> None:
    """Drop every table of the initial schema."""
    op.drop_table("job")
    op.drop_table("node_energy")
    op.drop_table("job_energy")
    op.drop_table("energy_interval")
    op.drop_table("ingested_batch")
