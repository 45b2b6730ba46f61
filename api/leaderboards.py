"""SQL for leaderboards and summaries: GROUP BY over the per-job summary in ``job``.

One row per job holds its IT, GPU and facility µJ, CO2e µg, GPU-seconds, samples, model and
phase (maintained at ingest), so nothing here reads ``energy_interval`` or the hourly table.

The model leaderboard counts a job by its in-job phase annotations where it has any: such a
job (``job.annotated``) is left out of the ``job`` rows and counted by its ``job_board_part``
rows instead, one per (model, phase) it annotated, its un-annotated rest under its job-level
model and phase (``collector/board.py``); facility energy and CO2e of a part are the job's
prorated by energy. A job without annotations is one part, under its job-level model and phase.
A row's ``jobs`` counts the jobs with a part in it, its median ranks those parts' energy, and
J per sample is the energy of the parts that reported samples over their samples.

Medians use ``percentile_cont`` in the same GROUP BY on PostgreSQL and a window over the group
on SQLite. On PostgreSQL a leaderboard with no cluster or time filter is one GROUP BY per model,
joined by UNION ALL: the ordered-set aggregate cannot be split into partial aggregates, but whole
per-model branches can run in parallel workers (Parallel Append), each an index-only scan of
``ix_job_model_energy`` (plus the model's board parts, ``ix_job_board_part_model``). Jobs are
selected by ``begin_at`` (start time, or first energy when Slurm sent no start) in
``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    case,
    false,
    func,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from jobenergy.api.access import Visible
from jobenergy.api.job_filters import scoped_rows, visible_clause
from jobenergy.collector.board import annotated_part_rows, job_part_rows
from jobenergy.collector.models import Job, JobBoardPart
from jobenergy.collector.rollups import (
    PERIODS,
    STATE,
    SUMMARY_STATE,
    WINDOW_STATE,
    fresh_through,
    summary_rows,
    total_rows,
)
from jobenergy.core.units import UJ_PER_J, UJ_PER_KWH

LEADERBOARD_METRICS = (
    "total_energy_kwh", "energy_kwh", "median_energy_kwh", "mean_energy_kwh", "co2e_kg",
    "facility_energy_kwh", "kwh_per_gpu_hour", "j_per_sample", "jobs", "gpu_hours",
)
#: What a summary row sums, in its order.
SUMMED = (Job.energy_uj, Job.gpu_uj, Job.facility_uj, Job.co2e_ug, Job.gpu_s)
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
    visible: Visible | None = None  # the caller's PrivateData=usage scope (api/access.py)
    #: A rolling window (``collector/rollups.py`` PERIODS: the last 24h, 7d, 30d), instead of
    #: start and end: answered from its materialisation where that applies, else live.
    period: str | None = None


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
    if window.visible is not None:
        clauses.append(visible_clause(window.visible))
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


#: Restricts a query to some models: given the model column, returns the condition.
ModelFilter = Callable[[Any], ColumnElement[bool]] | None


def _equals(model: str, column: Any) -> ColumnElement[bool]:
    return column == model  # type: ignore[no-any-return]


def _job_parts(window: Window, models: ModelFilter = None) -> Select[Any]:
    """Jobs without annotations: one part each, under the job-level model and phase."""
    where = _where(window)
    if models is not None:
        where.append(models(Job.model))
    return job_part_rows(where)


def _board_parts(window: Window, models: ModelFilter = None) -> Select[Any]:
    """Annotated jobs: their ``job_board_part`` rows, with the job's factors prorated."""
    b = JobBoardPart
    part_where: list[Any] = []
    if window.cluster is not None:
        part_where.append(b.cluster == window.cluster)
    if window.phase is not None:
        part_where.append(b.phase == window.phase)
    if models is not None:
        part_where.append(models(b.model))
    job_where = _where(Window(start=window.start, end=window.end, visible=window.visible))
    return annotated_part_rows(job_where, part_where)


def _parts(window: Window, models: ModelFilter = None) -> Any:
    """Every leaderboard part in ``window`` (of the ``models`` when given), as one subquery."""
    return union_all(_job_parts(window, models), _board_parts(window, models)).subquery()


def _sqlite_medians(session: Session, window: Window) -> dict[tuple[str, str | None], float]:
    parts = _parts(window)
    ranked = (
        select(
            parts.c.model, parts.c.phase, parts.c.energy_uj,
            func.row_number().over(partition_by=(parts.c.model, parts.c.phase),
                                   order_by=parts.c.energy_uj).label("rn"),
            func.count().over(partition_by=(parts.c.model, parts.c.phase)).label("n"),
        )
        .subquery()
    )
    stmt = (
        select(ranked.c.model, ranked.c.phase, func.avg(ranked.c.energy_uj))
        .where(ranked.c.rn.in_([(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2]))
        .group_by(ranked.c.model, ranked.c.phase)
    )
    return {(m, p): float(v) for m, p, v in session.execute(stmt)}


def _leaderboard_select(window: Window, postgres: bool, models: ModelFilter = None) -> Select[Any]:
    """Every part of ``window`` (of the ``models``), grouped by (model, phase)."""
    parts = _parts(window, models)
    # The median is an ordered-set aggregate of the same GROUP BY on PostgreSQL.
    median = (func.percentile_cont(0.5).within_group(parts.c.energy_uj) if postgres
              else literal(None))
    return (
        select(
            parts.c.model, parts.c.phase, func.count(), func.sum(parts.c.energy_uj),
            func.sum(parts.c.facility_uj), func.sum(parts.c.co2e_ug), func.sum(parts.c.gpu_s),
            func.sum(parts.c.samples), func.sum(parts.c.sampled_uj), median,
        )
        .group_by(parts.c.model, parts.c.phase)
    )


def _jobs_only_select(window: Window, postgres: bool, models: ModelFilter = None) -> Select[Any]:
    """The same for models with no board part: the ``job`` rows alone, grouped as they are
    indexed (an index-only scan already in (phase, energy) order: no sort, no join)."""
    median = (func.percentile_cont(0.5).within_group(Job.energy_uj) if postgres
              else literal(None))
    with_samples = Job.samples > 0
    where = [Job.model.is_not(None), Job.annotated == false(), *_where(window)]
    if models is not None:
        where.append(models(Job.model))
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


# The distinct models of the board parts, by the same loose index scan.
_BOARD_MODELS_SQL = text(
    "WITH RECURSIVE m(model) AS ("
    " SELECT min(model) FROM job_board_part"
    " UNION ALL"
    " SELECT (SELECT min(b.model) FROM job_board_part b WHERE b.model > m.model)"
    " FROM m WHERE m.model IS NOT NULL"
    ") SELECT model FROM m WHERE model IS NOT NULL LIMIT :limit"
)


def _board_models(session: Session, postgres: bool) -> set[str]:
    """Models that have board parts (at most ``MAX_MODEL_BRANCHES + 1`` of them)."""
    if postgres:
        rows = session.execute(_BOARD_MODELS_SQL, {"limit": MAX_MODEL_BRANCHES + 1})
    else:
        rows = session.execute(
            select(JobBoardPart.model).distinct().limit(MAX_MODEL_BRANCHES + 1))
    return set(rows.scalars().all())


def _leaderboard_stmt(session: Session, window: Window, postgres: bool) -> Any:
    """The leaderboard's GROUP BY: one per model under UNION ALL where that can run in parallel.

    Models with board parts (annotated jobs) aggregate the union of their job rows and parts;
    the others, and every model while no job is annotated, their job rows alone.
    """
    board = _board_models(session, postgres)
    if postgres and window.cluster is None and window.start is None and window.end is None:
        models = set(session.execute(
            _MODELS_SQL, {"limit": MAX_MODEL_BRANCHES + 1}).scalars().all())
        if models:
            models |= board
        if 0 < len(models) <= MAX_MODEL_BRANCHES:
            return union_all(*(
                (_leaderboard_select if model in board else _jobs_only_select)(
                    window, postgres, partial(_equals, model))
                for model in sorted(models)
            ))
    if not board:
        return _jobs_only_select(window, postgres)
    if len(board) > MAX_MODEL_BRANCHES:
        return _leaderboard_select(window, postgres)
    return union_all(
        _jobs_only_select(window, postgres, lambda column: column.not_in(sorted(board))),
        _leaderboard_select(window, postgres, lambda column: column.in_(sorted(board))),
    )


#: Leaderboard sources: ``live`` reads every job; ``rollup`` the all-time leaderboard
#: materialised by ``collector/rollups.py`` (exact, as of its last computation), for a request
#: with no start or end from a caller who may count every job; ``auto`` that where it pays:
#: more than ``ROLLUP_MIN_JOBS`` jobs (PostgreSQL's estimate), else live.
SOURCES = ("auto", "live", "rollup")
ROLLUP_MIN_JOBS = 500_000

#: One (model, phase): jobs, energy, facility, CO2e, GPU-s, samples, sampled energy, median µJ.
Aggregate = tuple[str, str | None, int, int, float, float, float, int | None, int | None, float]


def _live_aggregates(session: Session, window: Window, postgres: bool) -> list[Aggregate]:
    if postgres:
        # The sort of the medians stays in memory (the default 4 MB spills 1 M jobs to disk),
        # and JIT compilation costs more than it saves on these sub-second aggregates.
        session.execute(text("SET LOCAL work_mem = '64MB'"))
        session.execute(text("SET LOCAL jit = off"))
        medians = {}
    else:
        medians = _sqlite_medians(session, window)
    rows: list[Aggregate] = []
    for (model, phase, jobs, energy, facility, co2e, gpu_s, samples, sampled_uj,
         pg_median) in session.execute(_leaderboard_stmt(session, window, postgres)):
        median = float(pg_median) if pg_median is not None else medians.get((model, phase), 0.0)
        rows.append((model, phase, int(jobs), int(energy or 0), float(facility or 0),
                     float(co2e or 0), float(gpu_s or 0), samples, sampled_uj, median))
    return rows


def all_time_totals(conn: Connection, cluster: str | None) -> list[Aggregate]:
    """The live leaderboard of ``cluster`` (None: all) over all time, for the roll-up to
    materialise (``collector/rollups.py``: ``TotalsFn``)."""
    with Session(bind=conn) as session:
        return _live_aggregates(session, Window(cluster=cluster),
                                conn.dialect.name == "postgresql")


def window_totals(conn: Connection, cluster: str | None, start: datetime, end: datetime
                  ) -> list[Aggregate]:
    """The live leaderboard of ``cluster`` (None: all) over the jobs that started in
    ``[start, end)``, for the rolling windows' roll-up (``WindowTotalsFn``)."""
    with Session(bind=conn) as session:
        return _live_aggregates(session, Window(cluster=cluster, start=start, end=end),
                                conn.dialect.name == "postgresql")


def _total_aggregates(session: Session, window: Window) -> list[Aggregate]:
    return [
        (model, phase or None, int(jobs), int(energy), float(facility), float(co2e),
         float(gpu_s), samples, sampled, float(median))
        for model, phase, jobs, energy, facility, co2e, gpu_s, samples, sampled, median
        in session.execute(total_rows(window.cluster, window.phase, window.period))
    ]


def _uses_rollup(session: Session, window: Window, source: str, postgres: bool,
                 state: str | None = None) -> datetime | None:
    """When the materialised leaderboard (or ``state``'s materialisation) answers this
    request, the time it is as of (for a rolling window: where it ends); None: live (start or
    end given, a caller who counts only some jobs, never computed, or a small database under
    ``auto``)."""
    if (source == "live" or window.visible is not None or window.start is not None
            or window.end is not None or (source == "auto" and not postgres)):
        return None
    if state is None:
        state = WINDOW_STATE if window.period is not None else STATE
    through = fresh_through(session.connection(), state)
    if through is None or source == "rollup":
        return through
    jobs = session.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = 'job'::regclass")).scalar()
    return through if (jobs or 0) > ROLLUP_MIN_JOBS else None


#: Held while a leaderboard or summary is computed live (``api/live_slots.py``).
LiveSlot = Callable[[], AbstractContextManager[Any]]


def model_leaderboard(
    session: Session, window: Window, metric: str, descending: bool, limit: int,
    source: str = "live", live_slot: LiveSlot = nullcontext,
) -> list[dict[str, Any]]:
    """Return per (model, phase) rows sorted by ``metric`` (None values last).

    Each row says where it comes from (``source``) and, from the materialised leaderboard,
    the time it is as of (``as_of``).
    A caller whose counting is restricted (``window.visible``) is always answered live, in
    ``live_slot``.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if window.visible is not None:
        source = "live"
    as_of = _uses_rollup(session, window, source, postgres)
    if as_of is None and window.period is not None:  # live: the period up to now
        window = replace(window, start=datetime.now(UTC) - PERIODS[window.period])
    if as_of is None:
        session.commit()  # no connection held while waiting for a slot
        with live_slot():
            aggregates = _live_aggregates(session, window, postgres)
    else:
        aggregates = _total_aggregates(session, window)
    rows = []
    for (model, phase, jobs, energy, facility, co2e, gpu_s, samples, sampled_uj,
         median) in aggregates:
        total_kwh = energy / UJ_PER_KWH
        gpu_hours = gpu_s / 3600
        rows.append({
            "model": model, "phase": phase, "jobs": jobs,
            "energy_kwh": total_kwh, "total_energy_kwh": total_kwh,
            "median_energy_kwh": median / UJ_PER_KWH,
            "mean_energy_kwh": total_kwh / jobs,
            "facility_energy_kwh": int(facility) / UJ_PER_KWH,
            "co2e_kg": int(co2e) / 1e9,
            "gpu_hours": gpu_hours,
            "kwh_per_gpu_hour": total_kwh / gpu_hours if gpu_hours else None,
            "samples": int(samples) if samples else None,
            "j_per_sample": int(sampled_uj) / UJ_PER_J / int(samples) if samples else None,
            "source": "live" if as_of is None else "rollup",
            "as_of": as_of,
        })
    known = [r for r in rows if r[metric] is not None]
    known.sort(key=lambda r: (r[metric], r["model"], r["phase"] or ""), reverse=descending)
    return (known + [r for r in rows if r[metric] is None])[:limit]


def summary_answer(session: Session, window: Window, group_by: str, source: str = "live",
                   live_slot: LiveSlot = nullcontext,
                   ) -> tuple[list[dict[str, Any]], datetime | None]:
    """Return the summary's rows and, when they come from the materialisation
    (``collector/rollups.py``: all time, or a rolling ``window.period``), its ``as_of``;
    otherwise computed now (None, in ``live_slot``), as the leaderboard chooses
    (``SOURCES``)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    as_of = _uses_rollup(session, window, source, postgres, SUMMARY_STATE)
    if as_of is None:
        if window.period is not None:  # live: the period up to now
            window = replace(window, start=datetime.now(UTC) - PERIODS[window.period])
        session.commit()  # no connection held while waiting for a slot
        with live_slot():
            return summary(session, window, group_by), None
    stmt = summary_rows(window.period or "", window.cluster, window.phase, group_by)
    return [_summary_row(*row) for row in session.execute(stmt)], as_of


def _exact(value: Any) -> int | float:
    """A SQL sum as a number: integers stay exact (live sums), floats (materialised) as is."""
    return value if isinstance(value, float) else int(value or 0)


def _summary_row(group: str | None, jobs: int, energy: Any, gpu: Any, facility: Any,
                 co2e: Any, gpu_s: Any) -> dict[str, Any]:
    return {
        "group": group, "jobs": int(jobs), "energy_kwh": _exact(energy) / UJ_PER_KWH,
        "gpu_energy_kwh": _exact(gpu) / UJ_PER_KWH,
        "facility_energy_kwh": _exact(facility) / UJ_PER_KWH,
        "co2e_kg": _exact(co2e) / 1e9, "gpu_hours": float(gpu_s or 0) / 3600,
    }


def summary(session: Session, window: Window, group_by: str) -> list[dict[str, Any]]:
    """Return totals per ``group_by`` value, largest energy first, computed now."""
    column = GROUPS[group_by]
    if session.get_bind().dialect.name == "postgresql":
        # The job table and its indexes are cached (or on SSD): at the default random_page_cost
        # of 4 the planner prices the index-only scan of ix_job_user_totals (no heap, no sort,
        # no hashing) above a parallel seq scan that takes twice as long.
        session.execute(text("SET LOCAL random_page_cost = 1.1"))
    if window.visible is None:
        rows: Any = Job.__table__
        where = _where(window)
    else:
        # The caller's jobs part by part, each from its own index (ix_job_user_totals holds
        # the sums: an index-only scan of their own jobs); the OR of the parts would be a
        # bitmap scan that reads each of their jobs' heap page.
        rows = scoped_rows([column, *SUMMED], _where(replace(window, visible=None)),
                           window.visible)
        where = []
    group = rows.c[column.key]
    stmt = (
        select(group, func.count(), *(func.sum(rows.c[c.key]) for c in SUMMED))
        .where(*where)
        .group_by(group)
        .order_by(func.sum(rows.c.energy_uj).desc(), group)
    )
    return [_summary_row(*row) for row in session.execute(stmt)]
