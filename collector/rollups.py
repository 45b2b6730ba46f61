"""The all-time model leaderboard, materialised: ``rollup_board_total``.

The live leaderboard reads one row per job part (``api/leaderboards.py``): about a second per
million jobs here, and an exact median cannot be added up from partial results, so no roll-up
maintained at ingest can give it. The leaderboard over all time (every cluster together, and
each cluster; a phase filter only selects rows) is instead computed whole, exact medians
included, into ``rollup_board_total`` and answered from there in milliseconds, with the time
it was computed from (``as_of``).

:func:`refresh` recomputes it when jobs changed (``job.updated_at``, indexed) since it was last
computed, at most every ``every``. The server runs it in the background
(``rollup_interval_s``), ``jobenergy db maintain`` on demand; on PostgreSQL an advisory lock
lets one of several collectors do it at a time, and readers see the previous leaderboard until
the new one commits.

The rolling windows pages ask for (the last 24 h, 7 d and 30 d: :data:`PERIODS`) are
materialised the same way into ``rollup_board_window``, over the jobs that started in
``[through - period, through)``; as time moves jobs leave them even when none changes, so
they are recomputed every ``every`` whatever changed (the all-time leaderboard only when jobs
changed). So are the summaries (``GET /api/v1/summary``: sums per user, account, partition,
model, phase or cluster) over all time and those windows, into ``rollup_summary``: per span
and group, one GROUP BY (cluster, phase, group), added up per scope and phase filter here.
An arbitrary window is not materialised: its median is over the window's jobs
(measured figures in ``bench/leaderboard_bench.py``). A per-day roll-up with energy buckets was
tried: one (cluster, model, phase, day) holds a few dozen jobs, so its bucket rows were as many
as the jobs themselves and read no faster than the jobs' covering index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, func, insert, select, text

from jobenergy.collector.models import (
    Job,
    RollupBoardTotal,
    RollupBoardWindow,
    RollupState,
    RollupSummary,
)
from jobenergy.collector.periodic import Periodic
from jobenergy.collector.sql import dialect_insert

logger = logging.getLogger(__name__)

#: ``rollup_state`` row of the all-time leaderboard.
STATE = "board_total"
#: ``rollup_state`` row of the rolling windows: ``through`` is where they end.
WINDOW_STATE = "board_window"
#: The rolling windows materialised: the ``period`` of ``GET /api/v1/leaderboards/models``.
PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
#: ``rollup_state`` row of the summaries (all time and the rolling windows, which end there).
SUMMARY_STATE = "summary"
#: What a summary groups by (``GET /api/v1/summary?group_by=``), as ``job`` columns.
SUMMARY_GROUPS = ("user", "account", "partition", "model", "phase", "cluster")
#: Phases a summary may be filtered by ("": every phase, the jobs without one too).
SUMMARY_PHASES = ("training", "inference", "other")
#: How often at most the leaderboard is recomputed: each time reads every job once.
DEFAULT_EVERY = timedelta(minutes=10)
#: Changed jobs are looked for from this long before the last computation started: a
#: transaction that stamped ``updated_at`` earlier may have committed after it.
SLACK = timedelta(minutes=5)
#: PostgreSQL advisory lock key of the refresh ("jobrollup").
_LOCK_KEY = 0x6A6F62726F6C6C

#: The live leaderboard of one cluster (None: all) over all time, one row per (model, phase
#: or None): jobs, energy µJ, facility µJ, CO2e µg, GPU-s, samples, sampled µJ, median µJ.
#: ``api/leaderboards.py`` has it; the collector does not import the API.
TotalsFn = Callable[[Connection, str | None], Sequence[tuple[Any, ...]]]
#: The same over the jobs that started in ``[start, end)``.
WindowTotalsFn = Callable[[Connection, str | None, datetime, datetime], Sequence[tuple[Any, ...]]]


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did: ``computed`` False when nothing changed or it was too soon."""

    computed: bool
    seconds: float
    windows: bool = False  #: the rolling windows were recomputed


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fresh_through(conn: Connection, name: str = STATE) -> datetime | None:
    """Jobs changed before this time are counted in the materialised leaderboard (``name``:
    :data:`STATE`, or :data:`WINDOW_STATE`, whose windows also end there) as they are now;
    None: never computed."""
    through = conn.execute(
        select(RollupState.through).where(RollupState.name == name)).scalar_one_or_none()
    return None if through is None else _as_utc(through)


def _due(conn: Connection, started: datetime, every: timedelta) -> bool:
    through = fresh_through(conn)
    if through is None:
        return True
    if started - through < every:
        return False
    changed = conn.execute(
        select(Job.updated_at).where(Job.updated_at >= through - SLACK).limit(1)).first()
    return changed is not None


def _row(aggregate: Sequence[Any], scope: str | None) -> dict[str, Any]:
    (model, phase, jobs, energy, facility, co2e, gpu_s, samples, sampled, median) = aggregate
    return {"scope": scope or "", "model": model, "phase": phase or "", "jobs": jobs,
            "energy_uj": energy, "facility_uj": facility, "co2e_ug": co2e, "gpu_s": gpu_s,
            "samples": samples, "sampled_uj": sampled, "median_uj": median}


def _replace(conn: Connection, table: Any, rows: list[dict[str, Any]], state: str,
             started: datetime) -> None:
    """Replace ``table``'s rows and mark them computed from ``started`` (one transaction)."""
    conn.execute(delete(table))
    if rows:
        conn.execute(insert(table), rows)
    now = datetime.now(UTC)
    conn.execute(
        dialect_insert(conn)(RollupState)
        .values(name=state, through=started, refreshed_at=now)
        .on_conflict_do_update(index_elements=[RollupState.name],
                               set_={"through": started, "refreshed_at": now})
    )


def _scopes(conn: Connection) -> list[str | None]:
    return [None, *sorted(conn.execute(select(Job.cluster).distinct()).scalars())]


def _compute(engine: Engine, totals: TotalsFn, started: datetime) -> None:
    with engine.begin() as conn:
        rows = [_row(agg, scope) for scope in _scopes(conn) for agg in totals(conn, scope)]
        _replace(conn, RollupBoardTotal, rows, STATE, started)


def _compute_windows(engine: Engine, totals: WindowTotalsFn, started: datetime) -> None:
    with engine.begin() as conn:
        rows = [{**_row(agg, scope), "period": period}
                for period, length in PERIODS.items() for scope in _scopes(conn)
                for agg in totals(conn, scope, started - length, started)]
        _replace(conn, RollupBoardWindow, rows, WINDOW_STATE, started)


def _summary_rows(conn: Connection, period: str, start: datetime | None, end: datetime
                  ) -> list[dict[str, Any]]:
    """The summaries of ``period`` ("" all time): per ``group_by``, one GROUP BY (cluster,
    phase, group), then each scope ("" and the cluster) and phase filter ("" and the phase)
    added up here, over rows as many as the groups (not the jobs)."""
    out: list[dict[str, Any]] = []
    for group_by in SUMMARY_GROUPS:
        column = getattr(Job, group_by)
        keys = [Job.cluster, Job.phase, column]
        stmt = select(*keys, func.count(), func.sum(Job.energy_uj), func.sum(Job.gpu_uj),
                      func.sum(Job.facility_uj), func.sum(Job.co2e_ug), func.sum(Job.gpu_s))
        if start is not None:
            stmt = stmt.where(Job.begin_at >= start, Job.begin_at < end)
        totals: dict[tuple[str, str, str | None], list[float]] = {}
        for cluster, phase, group, *sums in conn.execute(stmt.group_by(*keys)):
            figures = [float(v or 0) for v in sums]
            for scope in ("", cluster):
                for phase_key in (("", phase) if phase in SUMMARY_PHASES else ("",)):
                    total = totals.setdefault((scope, phase_key, group), [0.0] * 6)
                    for k, v in enumerate(figures):
                        total[k] += v
        out += [{"period": period, "scope": scope, "phase": phase, "group_by": group_by,
                 "group": group, "jobs": int(t[0]), "energy_uj": t[1], "gpu_uj": t[2],
                 "facility_uj": t[3], "co2e_ug": t[4], "gpu_s": t[5]}
                for (scope, phase, group), t in totals.items()]
    return out


def _compute_summaries(engine: Engine, started: datetime) -> None:
    with engine.begin() as conn:
        rows = _summary_rows(conn, "", None, None)
        for period, length in PERIODS.items():
            rows += _summary_rows(conn, period, started - length, started)
        _replace(conn, RollupSummary, rows, SUMMARY_STATE, started)


def summary_rows(period: str, cluster: str | None, phase: str | None, group_by: str
                 ) -> Select[Any]:
    """SQL: one materialised summary, largest energy first (as the live one)."""
    t = RollupSummary
    return (select(t.group, t.jobs, t.energy_uj, t.gpu_uj, t.facility_uj, t.co2e_ug, t.gpu_s)
            .where(t.period == period, t.scope == (cluster or ""), t.phase == (phase or ""),
                   t.group_by == group_by)
            .order_by(t.energy_uj.desc(), t.group))


def refresh(engine: Engine, totals: TotalsFn, every: timedelta = DEFAULT_EVERY,
            window_totals: WindowTotalsFn | None = None) -> RefreshResult | None:
    """Recompute the all-time leaderboard if jobs changed since it was computed and that was
    ``every`` ago or more, and (with ``window_totals``) the rolling windows once they are
    ``every`` old; None when another process is at it."""
    started = datetime.now(UTC)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as lock_conn:
        if postgres and not lock_conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}).scalar():
            return None
        # The session holds the lock across the commit; left idle in a transaction for the
        # whole refresh, the connection would be ended by idle_in_transaction_session_timeout.
        lock_conn.commit()
        try:
            with engine.connect() as conn:
                due = _due(conn, started, every)
                ends = fresh_through(conn, WINDOW_STATE)
            windows = window_totals is not None and (ends is None or started - ends >= every)
            if due:
                _compute(engine, totals, started)
            if windows:
                assert window_totals is not None
                _compute_windows(engine, window_totals, started)
                # Sums age out of their windows as the leaderboards do: same schedule.
                _compute_summaries(engine, started)
        finally:
            if postgres:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                lock_conn.commit()
    seconds = (datetime.now(UTC) - started).total_seconds()
    if due or windows:
        logger.debug("leaderboards recomputed in %.2f s (all time: %s, windows: %s)", seconds,
                     due, windows)
    return RefreshResult(computed=due, seconds=seconds, windows=windows)


def total_rows(cluster: str | None, phase: str | None, period: str | None = None
               ) -> Select[Any]:
    """SQL: the materialised leaderboard's rows of one cluster (None: all), of one phase, over
    all time or (``period``) one of the rolling windows."""
    t: Any = RollupBoardTotal if period is None else RollupBoardWindow
    where = [t.scope == (cluster or "")]
    if period is not None:
        where.append(t.period == period)
    if phase is not None:
        where.append(t.phase == phase)
    return select(t.model, t.phase, t.jobs, t.energy_uj, t.facility_uj, t.co2e_ug, t.gpu_s,
                  t.samples, t.sampled_uj, t.median_uj).where(*where)


def refresher(engine: Engine, interval_s: float, totals: TotalsFn,
              window_totals: WindowTotalsFn | None = None) -> Periodic:
    """:func:`refresh` in the background: right away (computed when never computed), then
    every ``interval_s``, recomputing at most that often while jobs change."""
    every = timedelta(seconds=interval_s)
    # The database down or busy: the leaderboard goes stale and says so (as_of).
    return Periodic("jobenergy-rollup", interval_s,
                    lambda _stop: refresh(engine, totals, every, window_totals),
                    "all-time leaderboard not refreshed")
