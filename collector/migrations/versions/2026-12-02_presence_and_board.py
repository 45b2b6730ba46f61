"""Final or still arriving, unmeasured jobs, phases in leaderboards.

- ``node_progress``: per node, how far its ingested intervals reach (``last_at``) and how many
  sources its latest interval had (0: an agent without counters); backfilled from
  ``node_energy`` (``last_sources``: the node's sources).
- ``job_node``: a job seen on a node by its agent, energy or not; backfilled from
  ``job_energy``.
- ``job_phase.gpu_s``: GPU-seconds per annotated phase; backfilled as the job's GPU-seconds
  prorated by the phase's energy.
- ``job.annotated`` and ``job_board_part``: the model leaderboard's per-(model, phase) parts of
  jobs with in-job annotations (``collector/board.py``); backfilled from ``job_phase``. The
  covering leaderboard indexes on ``job`` carry ``annotated`` (PostgreSQL).

Revision ID: 0007_presence_and_board
Revises: 0006_factor_change
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007_presence_and_board"
down_revision: str | None = "0006_factor_change"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INCLUDE = ["facility_uj", "co2e_ug", "gpu_s", "samples"]


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _leaderboard_indexes(include: list[str]) -> None:
    op.drop_index("ix_job_model_energy", table_name="job")
    op.create_index(
        "ix_job_model_energy", "job", ["model", "phase", "energy_uj"],
        postgresql_include=include, postgresql_where=sa.text("model IS NOT NULL"),
    )
    op.drop_index("ix_job_cluster_model", table_name="job")
    op.create_index(
        "ix_job_cluster_model", "job", ["cluster", "phase", "model", "energy_uj"],
        postgresql_include=include, postgresql_where=sa.text("model IS NOT NULL"),
    )


def _parts(job: tuple[Any, ...], phases: list[tuple[Any, ...]]) -> dict[tuple[str, str], list[Any]]:
    """The rules of ``collector/board.py: board_parts`` as of this revision."""
    job_model, job_phase, job_energy, job_gpu_s = job
    parts: dict[tuple[str, str], list[Any]] = {}
    annotated_uj, annotated_gpu_s = 0, 0.0
    for phase, model, energy, samples, gpu_s in phases:
        annotated_uj += int(energy)
        annotated_gpu_s += float(gpu_s or 0.0)
        name = model or job_model
        if not name:
            continue
        part = parts.setdefault((name, phase), [0, 0, None, 0.0])
        part[0] += int(energy)
        part[3] += float(gpu_s or 0.0)
        if samples:
            part[2] = (part[2] or 0) + int(samples)
    for part in parts.values():
        part[1] = part[0] if part[2] else 0
    rest_uj = max(0, int(job_energy or 0) - annotated_uj)
    rest_gpu_s = max(0.0, float(job_gpu_s or 0.0) - annotated_gpu_s)
    kept = {key: part for key, part in parts.items() if part[0] > 0 or part[2]}
    if job_model and (rest_uj > 0 or not kept):
        key = (job_model, job_phase or "")
        part = kept.setdefault(key, parts.get(key, [0, 0, None, 0.0]))
        part[0] += rest_uj
        part[3] += rest_gpu_s
    return kept


def _backfill() -> None:
    conn = op.get_bind()
    conn.execute(sa.text(
        "INSERT INTO node_progress (cluster, node, first_at, last_at, intervals, last_sources) "
        "SELECT cluster, node, MIN(first_at), MAX(last_at), MAX(intervals), COUNT(*) "
        "FROM node_energy GROUP BY cluster, node"
    ))
    conn.execute(sa.text(
        "INSERT INTO job_node (cluster, job_id, node, first_at, last_at, intervals) "
        "SELECT cluster, job_id, node, MIN(first_at), MAX(last_at), MAX(intervals) "
        "FROM job_energy GROUP BY cluster, job_id, node"
    ))
    conn.execute(sa.text(
        "UPDATE job_phase SET gpu_s = COALESCE((SELECT job.gpu_s * job_phase.energy_uj / "
        "job.energy_uj FROM job WHERE job.cluster = job_phase.cluster AND job.job_id = "
        "job_phase.job_id AND job.energy_uj > 0), 0)"
    ))
    conn.execute(
        sa.text(
            "UPDATE job SET annotated = :yes WHERE EXISTS (SELECT 1 FROM job_phase p "
            "WHERE p.cluster = job.cluster AND p.job_id = job.job_id)"
        ).bindparams(sa.bindparam("yes", True, type_=sa.Boolean())),
    )
    phases: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    jobs: dict[tuple[str, str], tuple[Any, ...]] = {}
    for row in conn.execute(sa.text(
        "SELECT p.cluster, p.job_id, p.phase, p.model, p.energy_uj, p.samples, p.gpu_s, "
        "j.model, j.phase, j.energy_uj, j.gpu_s FROM job_phase p JOIN job j ON "
        "j.cluster = p.cluster AND j.job_id = p.job_id"
    )):
        key = (row[0], row[1])
        phases[key].append(tuple(row[2:7]))
        jobs[key] = tuple(row[7:11])
    rows = [
        {"cluster": cluster, "job_id": job_id, "model": model, "phase": phase,
         "energy_uj": e, "sampled_uj": sampled, "samples": n, "gpu_s": g}
        for (cluster, job_id), job_row in sorted(jobs.items())
        for (model, phase), (e, sampled, n, g) in sorted(
            _parts(job_row, phases[(cluster, job_id)]).items())
    ]
    if rows:
        part = sa.table("job_board_part", *(sa.column(c) for c in rows[0]))
        conn.execute(part.insert(), rows)


def upgrade() -> None:
    """Create the tables and columns; backfill them."""
    op.create_table(
        "node_progress",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("first_at", _utc(), nullable=False),
        sa.Column("last_at", _utc(), nullable=False),
        sa.Column("intervals", sa.BigInteger(), nullable=False),
        sa.Column("last_sources", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "node", name=op.f("pk_node_progress")),
    )
    op.create_table(
        "job_node",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("first_at", _utc(), nullable=False),
        sa.Column("last_at", _utc(), nullable=False),
        sa.Column("intervals", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "job_id", "node", name=op.f("pk_job_node")),
    )
    op.create_table(
        "job_board_part",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("energy_uj", sa.BigInteger(), nullable=False),
        sa.Column("sampled_uj", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=True),
        sa.Column("gpu_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "cluster", "job_id", "model", "phase", name=op.f("pk_job_board_part")
        ),
    )
    op.create_index(
        "ix_job_board_part_model", "job_board_part", ["model", "phase", "energy_uj"]
    )
    op.add_column(
        "job_phase", sa.Column("gpu_s", sa.Float(), server_default="0", nullable=False)
    )
    op.add_column(
        "job", sa.Column("annotated", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    _leaderboard_indexes([*_INCLUDE, "annotated"])
    _backfill()


def downgrade() -> None:
    """Drop what ``upgrade`` added."""
    _leaderboard_indexes(_INCLUDE)
    with op.batch_alter_table("job") as batch:
        batch.drop_column("annotated")
    with op.batch_alter_table("job_phase") as batch:
        batch.drop_column("gpu_s")
    op.drop_index("ix_job_board_part_model", table_name="job_board_part")
    op.drop_table("job_board_part")
    op.drop_table("job_node")
    op.drop_table("node_progress")
