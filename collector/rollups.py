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

A leaderboard over a time window is not materialised: its median is over the window's jobs
(measured figures in ``bench/leaderboard_bench.py``). A per-day roll-up with energy buckets was
tried: one (cluster, model, phase, day) holds a few dozen jobs, so its bucket rows were as many
as the jobs themselves and read no faster than the jobs' covering index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from jobenergy.collector.models import Job, RollupBoardTotal, RollupState
from jobenergy.collector.sql import dialect_insert

logger = logging.getLogger(__name__)

#: ``rollup_state`` row of the all-time leaderboard.
STATE = "board_total"
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


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did: ``computed`` False when nothing changed or it was too soon."""

    computed: bool
    seconds: float


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fresh_through(conn: Connection) -> datetime | None:
    """Jobs changed before this time are counted in the materialised leaderboard as they are
    now; None: never computed."""
    through = conn.execute(
        select(RollupState.through).where(RollupState.name == STATE)).scalar_one_or_none()
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


def _compute(engine: Engine, totals: TotalsFn, started: datetime) -> None:
    with engine.begin() as conn:
        rows = []
        clusters = conn.execute(select(Job.cluster).distinct()).scalars().all()
        for scope in (None, *sorted(clusters)):
            for (model, phase, jobs, energy, facility, co2e, gpu_s, samples, sampled,
                 median) in totals(conn, scope):
                rows.append({
                    "scope": scope or "", "model": model, "phase": phase or "", "jobs": jobs,
                    "energy_uj": energy, "facility_uj": facility, "co2e_ug": co2e,
                    "gpu_s": gpu_s, "samples": samples, "sampled_uj": sampled,
                    "median_uj": median,
                })
        conn.execute(delete(RollupBoardTotal))
        if rows:
            conn.execute(insert(RollupBoardTotal), rows)
        now = datetime.now(UTC)
        conn.execute(
            dialect_insert(conn)(RollupState)
            .values(name=STATE, through=started, refreshed_at=now)
            .on_conflict_do_update(index_elements=[RollupState.name],
                                   set_={"through": started, "refreshed_at": now})
        )


def refresh(engine: Engine, totals: TotalsFn, every: timedelta = DEFAULT_EVERY
            ) -> RefreshResult | None:
    """Recompute the all-time leaderboard if jobs changed since it was computed and that was
    ``every`` ago or more; None when another process is at it."""
    started = datetime.now(UTC)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as lock_conn:
        if postgres and not lock_conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}).scalar():
            return None
        try:
            with engine.connect() as conn:
                due = _due(conn, started, every)
            if due:
                _compute(engine, totals, started)
        finally:
            if postgres:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                lock_conn.commit()
    seconds = (datetime.now(UTC) - started).total_seconds()
    if due:
        logger.debug("all-time leaderboard recomputed in %.2f s", seconds)
    return RefreshResult(computed=due, seconds=seconds)


def total_rows(cluster: str | None, phase: str | None) -> Select[Any]:
    """SQL: the materialised leaderboard's rows of one cluster (None: all), of one phase."""
    t = RollupBoardTotal
    where = [t.scope == (cluster or "")]
    if phase is not None:
        where.append(t.phase == phase)
    return select(t.model, t.phase, t.jobs, t.energy_uj, t.facility_uj, t.co2e_ug, t.gpu_s,
                  t.samples, t.sampled_uj, t.median_uj).where(*where)


class Refresher:
    """Runs :func:`refresh` every ``interval_s`` in a daemon thread until :meth:`stop`."""

    def __init__(self, engine: Engine, interval_s: float, totals: TotalsFn) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._totals = totals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobenergy-rollup", daemon=True)

    def start(self) -> None:
        """Start refreshing: computed right away when never computed, then at most every
        ``interval_s`` while jobs change (checked every ``interval_s`` too)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the refresh under way, if any."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        every = timedelta(seconds=self._interval_s)
        while not self._stop.is_set():
            try:
                refresh(self._engine, self._totals, every)
            except SQLAlchemyError as err:
                # The database is down or busy: the leaderboard goes stale and says so (as_of).
                logger.warning("all-time leaderboard not refreshed: %s",
                               str(getattr(err, "orig", None) or err).splitlines()[0])
            self._stop.wait(self._interval_s)
