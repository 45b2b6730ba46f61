"""Carbon and PUE as data, per-job summary, hourly energy, phases.

Adds the per-job summary columns to ``job``, the ``job_energy_hour``, ``job_phase``,
``cluster_config`` and ``factor_point`` tables, and backfills the summary and the hours of the
jobs already stored (from ``job_energy`` and ``energy_interval``). Facility energy and CO2e of
the backfilled hours use PUE 1 and the world average; ``jobenergy cluster set-pue|set-carbon``
recomputes them (a server start never does: ``collector/clusters.py: seed_defaults``).

Revision ID: 0002_carbon
Revises: 0001_initial
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from jobenergy.core.carbon import WORLD_AVERAGE_G_PER_KWH, co2e_ug, split_over_hours

revision: str = "0002_carbon"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _backfill() -> None:
    conn = op.get_bind()
    conn.execute(sa.text(
        "UPDATE job SET "
        "energy_uj = COALESCE((SELECT SUM(e.energy_uj) FROM job_energy e WHERE e.cluster = "
        "job.cluster AND e.job_id = job.job_id AND e.component IN ('cpu', 'dram', 'gpu')), 0), "
        "gpu_uj = COALESCE((SELECT SUM(e.energy_uj) FROM job_energy e WHERE e.cluster = "
        "job.cluster AND e.job_id = job.job_id AND e.component = 'gpu'), 0), "
        "gpu_s = COALESCE((SELECT SUM(e.covered_s) FROM job_energy e WHERE e.cluster = "
        "job.cluster AND e.job_id = job.job_id AND e.component = 'gpu'), 0), "
        "begin_at = COALESCE(start_at, (SELECT MIN(e.first_at) FROM job_energy e WHERE "
        "e.cluster = job.cluster AND e.job_id = job.job_id))"
    ))
    hours: dict[tuple[str, str, object], int] = {}
    rows = conn.execute(sa.text(
        "SELECT cluster, job_id, start_at, end_at, energy_uj FROM energy_interval "
        "WHERE job_id IS NOT NULL"
    ))
    for cluster, job_id, start, end, energy in rows:
        if isinstance(start, str):  # SQLite through a raw text() query
            start, end = datetime.fromisoformat(start), datetime.fromisoformat(end)
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end
        for hour, part in split_over_hours(start, end, int(energy)).items():
            hours[(cluster, job_id, hour)] = hours.get((cluster, job_id, hour), 0) + part
    if not hours:
        return
    table = sa.table(
        "job_energy_hour", *(sa.column(c) for c in (
            "cluster", "job_id", "hour_at", "energy_uj", "facility_uj", "co2e_ug", "pue",
            "carbon_g_per_kwh", "pue_source", "carbon_source"))
    )
    sqlite = conn.dialect.name == "sqlite"
    conn.execute(table.insert(), [
        {
            "cluster": c, "job_id": j,
            "hour_at": h.replace(tzinfo=None) if sqlite else h,
            "energy_uj": e, "facility_uj": e, "co2e_ug": co2e_ug(e, WORLD_AVERAGE_G_PER_KWH),
            "pue": 1.0, "carbon_g_per_kwh": WORLD_AVERAGE_G_PER_KWH, "pue_source": "default",
            "carbon_source": "fallback",
        }
        for (c, j, h), e in hours.items()
    ])
    conn.execute(sa.text(
        "UPDATE job SET "
        "facility_uj = COALESCE((SELECT SUM(h.facility_uj) FROM job_energy_hour h WHERE "
        "h.cluster = job.cluster AND h.job_id = job.job_id), 0), "
        "co2e_ug = COALESCE((SELECT SUM(h.co2e_ug) FROM job_energy_hour h WHERE "
        "h.cluster = job.cluster AND h.job_id = job.job_id), 0)"
    ))


def upgrade() -> None:
    """Add the summary columns and the carbon/PUE/phase tables; backfill."""
    op.add_column("job", sa.Column("begin_at", _utc(), nullable=True))
    op.add_column("job", sa.Column("model", sa.String(length=255), nullable=True))
    op.add_column("job", sa.Column("phase", sa.String(length=16), nullable=True))
    for name in ("energy_uj", "gpu_uj", "facility_uj", "co2e_ug"):
        op.add_column(
            "job", sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)
        )
    op.add_column("job", sa.Column("gpu_s", sa.Float(), server_default="0", nullable=False))
    op.add_column("job", sa.Column("samples", sa.BigInteger(), nullable=True))
    op.create_index("ix_job_begin_at", "job", ["begin_at"])
    op.create_index("ix_job_model", "job", ["model", "phase", "begin_at"])
    op.create_index(
        "ix_job_model_energy", "job", ["model", "phase", "energy_uj"],
        postgresql_include=["facility_uj", "co2e_ug", "gpu_s", "samples"],
        postgresql_where=sa.text("model IS NOT NULL"),
    )
    op.create_table(
        "job_energy_hour",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("hour_at", _utc(), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("facility_uj", sa.BigInteger(), nullable=False),
        sa.Column("co2e_ug", sa.BigInteger(), nullable=False),
        sa.Column("pue", sa.Float(), nullable=False),
        sa.Column("carbon_g_per_kwh", sa.Float(), nullable=False),
        sa.Column("pue_source", sa.String(length=32), nullable=False),
        sa.Column("carbon_source", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "job_id", "hour_at", name=op.f("pk_job_energy_hour")),
    )
    op.create_index(
        "ix_job_energy_hour_cluster_hour_at", "job_energy_hour", ["cluster", "hour_at"]
    )
    op.create_table(
        "job_phase",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("intervals", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=True),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("metrics", _json(), nullable=True),
        sa.Column("tags", _json(), nullable=True),
        sa.Column("first_at", _utc(), nullable=True),
        sa.Column("last_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("cluster", "job_id", "phase", "model", name=op.f("pk_job_phase")),
    )
    op.create_table(
        "cluster_config",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("pue", sa.Float(), nullable=True),
        sa.Column("carbon_source", sa.String(length=16), nullable=True),
        sa.Column("carbon_params", _json(), nullable=True),
        sa.Column("carbon_g_per_kwh", sa.Float(), nullable=True),
        sa.Column("carbon_label", sa.String(length=255), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", name=op.f("pk_cluster_config")),
    )
    op.create_table(
        "factor_point",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("factor", sa.String(length=16), nullable=False),
        sa.Column("start_at", _utc(), nullable=False),
        sa.Column("end_at", _utc(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "factor", "start_at", name=op.f("pk_factor_point")),
    )
    _backfill()


def downgrade() -> None:
    """Drop what ``upgrade`` added."""
    op.drop_table("factor_point")
    op.drop_table("cluster_config")
    op.drop_table("job_phase")
    op.drop_index("ix_job_energy_hour_cluster_hour_at", table_name="job_energy_hour")
    op.drop_table("job_energy_hour")
    op.drop_index("ix_job_model_energy", table_name="job")
    op.drop_index("ix_job_model", table_name="job")
    op.drop_index("ix_job_begin_at", table_name="job")
    with op.batch_alter_table("job") as batch:
        for name in ("samples", "gpu_s", "co2e_ug", "facility_uj", "gpu_uj", "energy_uj",
                     "phase", "model", "begin_at"):
            batch.drop_column(name)
