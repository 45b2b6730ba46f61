"""SQL for leaderboards and summaries: GROUP BY over the per-job summary in ``job``.

One row per job holds its IT, GPU and facility µJ, CO2e µg, GPU-seconds, samples, model and
phase (maintained at ingest), so nothing here reads ``energy_interval`` or the hourly table.
Medians use ``percentile_cont`` in the same GROUP BY on PostgreSQL and a window over the group
on SQLite. On PostgreSQL a leaderboard with no cluster or time filter is one GROUP BY per model,
joined by UNION ALL: the ordered-set aggregate cannot be split into partial aggregates, but whole
per-model branches can run in parallel workers (Parallel Append), each an index-only scan of
``ix_job_model_energy`` already ordered by (phase, energy). Jobs are
selected by ``begin_at`` (start time, or first energy when Slurm sent no start) in
``[start, end)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, literal, select, text, union_all
from sqlalchemy.orm import Session

from jobenergy.collector.models import Job
from jobenergy.core.units import UJ_PER_J, UJ_PER_KWH

LEADERBOARD_METRICS = (
    "total_energy_kwh", "energy_kwh", "median_energy_kwh", "mean_energy_kwh", "co2e_kg",
    "facility_energy_kwh", "kwh_per_gpu_hour", "j_per_sample", "jobs", "gpu_hours",
)
GROUPS = {
    "user": Job.user, "account": Job.account, "partition": Job.partition, "model": Job.model,
    "phase": Job.phase, "cluster": Job.cluster,
}


@dataclass(frozen=True)
class Window:
    """Filters shared by leaderboards and summaries (None: no filter)."""

    cluster: str | None = None
    phase: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def _where(window: Window) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if window.cluster is not None:
        clauses.append(Job.cluster == window.cluster)
    if window.phase is not None:
        clauses.append(Job.phase == window.phase)
    if window.start is not None:
        clauses.append(Job.begin_at >= window.start)
    if window.end is not None:
        clauses.append(Job.begin_at < window.end)
    return clauses


#: Most models for which a leaderboard is one UNION ALL branch per model; beyond, planning the
#: branches would cost more than the parallel scan saves, and it is a single GROUP BY.
MAX_MODEL_BRANCHES = 200

# The distinct models: a loose index scan of ix_job_model_energy (one probe per model), stopped
# after MAX_MODEL_BRANCHES + 1 of them. None unless VACUUM has marked 90 % of ``job`` all-visible:
# without the visibility map the branches become bitmap heap scans that read most of the table
# once per model, and the single GROUP BY is far cheaper.
_ALL_VISIBLE = "(SELECT relallvisible >= 0.9 * relpages FROM pg_class WHERE oid = 'job'::regclass)"
_MODELS_SQL = text(
    "WITH RECURSIVE m(model) AS ("
    " SELECT min(model) FROM job WHERE model IS NOT NULL"
    " UNION ALL"
    " SELECT (SELECT min(j.model) FROM job j WHERE j.model > m.model)"
    " FROM m WHERE m.model IS NOT NULL"
    ") SELECT model FROM m WHERE model IS NOT NULL"
    f" AND {_ALL_VISIBLE} LIMIT :limit"
)


def _sqlite_medians(session: Session, where: list[Any]) -> dict[tuple[str, str | None], float]:
    ranked = (
        select(
            Job.model, Job.phase, Job.energy_uj,
            func.row_number().over(partition_by=(Job.model, Job.phase),
                                   order_by=Job.energy_uj).label("rn"),
            func.count().over(partition_by=(Job.model, Job.phase)).label("n"),
        )
        .where(*where)
        .subquery()
    )
    stmt = (
        select(ranked.c.model, ranked.c.phase, func.avg(ranked.c.energy_uj))
        .where(ranked.c.rn.in_([(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2]))
        .group_by(ranked.c.model, ranked.c.phase)
    )
    return {(m, p): float(v) for m, p, v in session.execute(stmt)}


def _leaderboard_select(where: list[Any], postgres: bool) -> Select[Any]:
    with_samples = Job.samples > 0
    # The median is an ordered-set aggregate of the same GROUP BY on PostgreSQL.
    median = (func.percentile_cont(0.5).within_group(Job.energy_uj) if postgres
              else literal(None))
    return (
        select(
            Job.model, Job.phase, func.count(), func.sum(Job.energy_uj),
            func.sum(Job.facility_uj), func.sum(Job.co2e_ug), func.sum(Job.gpu_s),
            func.sum(case((with_samples, Job.samples))),
            func.sum(case((with_samples, Job.energy_uj))), median,
        )
        .where(*where)
        .group_by(Job.model, Job.phase)
    )


def _leaderboard_stmt(
    session: Session, window: Window, where: list[Any], postgres: bool
) -> Any:
    """The leaderboard's GROUP BY: one per model under UNION ALL where that can run in parallel."""
    if postgres and window.cluster is None and window.start is None and window.end is None:
        models = session.execute(_MODELS_SQL, {"limit": MAX_MODEL_BRANCHES + 1}).scalars().all()
        if 0 < len(models) <= MAX_MODEL_BRANCHES:
            return union_all(*(
                _leaderboard_select([Job.model == model, *where], postgres) for model in models
            ))
    return _leaderboard_select(where, postgres)


def model_leaderboard(
    session: Session, window: Window, metric: str, descending: bool, limit: int
) -> list[dict[str, Any]]:
    """Return per (model, phase) rows sorted by ``metric`` (None values last)."""
    where = [Job.model.is_not(None), *_where(window)]
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        # The sort of the medians stays in memory (the default 4 MB spills 1 M jobs to disk),
        # and JIT compilation costs more than it saves on these sub-second aggregates.
        session.execute(text("SET LOCAL work_mem = '64MB'"))
        session.execute(text("SET LOCAL jit = off"))
        medians = {}
    else:
        medians = _sqlite_medians(session, where)
    stmt = _leaderboard_stmt(session, window, where, postgres)
    rows = []
    for (model, phase, jobs, energy, facility, co2e, gpu_s, samples, sampled_uj,
         pg_median) in session.execute(stmt):
        if pg_median is not None:
            medians[(model, phase)] = float(pg_median)
        total_kwh = int(energy or 0) / UJ_PER_KWH
        gpu_hours = float(gpu_s or 0) / 3600
        rows.append({
            "model": model, "phase": phase, "jobs": int(jobs),
            "energy_kwh": total_kwh, "total_energy_kwh": total_kwh,
            "median_energy_kwh": medians.get((model, phase), 0.0) / UJ_PER_KWH,
            "mean_energy_kwh": total_kwh / jobs,
            "facility_energy_kwh": int(facility or 0) / UJ_PER_KWH,
            "co2e_kg": int(co2e or 0) / 1e9,
            "gpu_hours": gpu_hours,
            "kwh_per_gpu_hour": total_kwh / gpu_hours if gpu_hours else None,
            "samples": int(samples) if samples else None,
            "j_per_sample": int(sampled_uj) / UJ_PER_J / int(samples) if samples else None,
        })
    known = [r for r in rows if r[metric] is not None]
    known.sort(key=lambda r: (r[metric], r["model"], r["phase"] or ""), reverse=descending)
    return (known + [r for r in rows if r[metric] is None])[:limit]


def summary(session: Session, window: Window, group_by: str) -> list[dict[str, Any]]:
    """Return totals per ``group_by`` value, largest energy first."""
    column = GROUPS[group_by]
    if session.get_bind().dialect.name == "postgresql":
        # The job table and its indexes are cached (or on SSD): at the default random_page_cost
        # of 4 the planner prices the index-only scan of ix_job_user_totals (no heap, no sort,
        # no hashing) above a parallel seq scan that takes twice as long.
        session.execute(text("SET LOCAL random_page_cost = 1.1"))
    stmt = (
        select(
            column, func.count(), func.sum(Job.energy_uj), func.sum(Job.gpu_uj),
            func.sum(Job.facility_uj), func.sum(Job.co2e_ug), func.sum(Job.gpu_s),
        )
        .where(*_where(window))
        .group_by(column)
        .order_by(func.sum(Job.energy_uj).desc(), column)
    )
    return [
        {
            "group": group, "jobs": int(jobs), "energy_kwh": int(energy or 0) / UJ_PER_KWH,
            "gpu_energy_kwh": int(gpu or 0) / UJ_PER_KWH,
            "facility_energy_kwh": int(facility or 0) / UJ_PER_KWH,
            "co2e_kg": int(co2e or 0) / 1e9, "gpu_hours": float(gpu_s or 0) / 3600,
        }
        for group, jobs, energy, gpu, facility, co2e, gpu_s in session.execute(stmt)
    ]
