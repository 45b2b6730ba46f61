"""SQL of the power series (``api/routes_series.py``): ``energy_interval`` bucketed in the
database, or the hourly tables (``job_energy_hour``, ``node_energy_hour``) read whole, or a
job's minutes (``job_energy_minute``, rolled up before retention) bucketed in the database.

One statement per series reads the window's rows through an index range
(``(cluster, job_id, start_at)`` for a job, ``(cluster, node, start_at)`` for a node or the
nodes of a cluster; on PostgreSQL the ``start_at`` bounds also prune the monthly partitions)
and groups them in one pass into two kinds of rows:

- the intervals lying wholly inside one bucket, summed per line and bucket (the bucket is
  the integer division by the step of the µs since a bucket edge before the window, on both
  backends): most rows, aggregated where they are;
- the intervals crossing a bucket edge, summed per line and interval span, which Python splits
  exactly (:func:`jobenergy.api.power_series.apportion`). Intervals of one line never overlap
  in time (ingest refuses that), so a line has at most one such interval per bucket edge:
  at most about :data:`~jobenergy.api.power_series.MAX_POINTS` per line, whatever the history.

Rows starting before the window are read from the earliest start of an interval reaching
into it: for a job or a node, probed per line (:func:`earliest_reaching`); for a cluster,
``start − MAX_INTERVAL_S`` (the longest interval accepted), as the collector's overlap check
does. An interval that reaches into the window is never missed.

Hourly data (steps of whole hours) is split at ingest as :func:`fill_lines` splits rows (each
stored share alone, by largest remainder over the overlap): a node's hourly series equals its
raw-interval series at the same step, bucket by bucket. A cluster's sums its nodes' hours;
from raw intervals, an interval crossing a bucket edge is split once for all its shares, so
the two may differ by a few µJ per bucket (never in total).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, select, text
from sqlalchemy.orm import Session

from jobenergy.api.power_series import Lines, apportion, epoch_us
from jobenergy.collector.job_minutes import MINUTES_FROM, ROLLED_THROUGH
from jobenergy.collector.models import (
    EnergyInterval,
    IntervalRetention,
    Job,
    JobEnergy,
    JobEnergyHour,
    JobEnergyMinute,
    JobPhase,
    NodeEnergy,
    NodeEnergyHour,
    NodeProgress,
    UtcDateTime,
)
from jobenergy.collector.partitions import RETAINED
from jobenergy.core.schema import ATTRIBUTED_COMPONENTS, MAX_INTERVAL_S

_EI = EnergyInterval.__tablename__
#: µs from ``:base`` (a bucket edge at or before every row read) to a timestamp column, exactly.
#: PostgreSQL: the interval's epoch as float8 is exact to far below a µs for spans of years
#: (and several times cheaper per row than EXTRACT's numeric). SQLite stores
#: ``YYYY-MM-DD HH:MM:SS.ffffff`` (naive UTC, collector/models.py) and its ``strftime('%s')``
#: rounds fractional seconds, so the whole seconds and the µs are read apart.
_SINCE_BASE_US = {
    "postgresql": "CAST(date_part('epoch', {col} - CAST(:{base} AS timestamptz)) * 1000000 "
                  "AS BIGINT)",
    "sqlite": ("(CAST(strftime('%s', substr({col}, 1, 19)) AS INTEGER) * 1000000 "
               "+ CAST(substr({col}, 21, 6) AS INTEGER) - :{base}_us)"),
}


#: ``work_mem`` of a bucketing statement on PostgreSQL (its hash aggregate; per process).
WORK_MEM = "32MB"
#: Read rows starting this long before the window without filtering them by their end.
_FILTER_REACH_AFTER = timedelta(hours=1)


def since_base_sql(dialect: str, column: str, base: str) -> str:
    """Return SQL for the µs from bind parameter ``base`` (``{base}_us`` on SQLite) to
    ``column`` on ``dialect``."""
    return _SINCE_BASE_US[dialect].format(col=column, base=base)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _time(name: str) -> Any:
    return bindparam(name, type_=UtcDateTime())


def _at(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def fill_lines(session: Session, lines: Lines, keys: Sequence[tuple[str, str]], where: str,
               params: dict[str, Any], lo: datetime | None = None,
               expanding: Sequence[str] = (), split_by: Sequence[str] = ()) -> None:
    """Add to ``lines`` the energy of the ``energy_interval`` rows matching ``where`` that
    overlap the grid, keyed by the ``keys`` (``(name, SQL expression)`` pairs).

    One GROUP BY (a hash aggregate, in parallel on PostgreSQL): an interval inside one bucket
    is grouped by its bucket, one crossing an edge by its own span, which Python splits.

    Args:
        session: The read session.
        lines: The lines to fill (their grid gives the window).
        keys: The line key columns, as ``(alias, SQL expression)``.
        where: SQL condition on ``energy_interval`` (bind parameters in ``params``).
        params: Values of the bind parameters of ``where``.
        lo: Earliest ``start_at`` to read (default: the grid's start − ``MAX_INTERVAL_S``).
        expanding: Names of list parameters (``IN :name``).
        split_by: Further columns whose rows crossing an edge are split one by one rather
            than summed first: a node's attributed line split per job share, so that it is
            the sum of the jobs' lines bucket by bucket.
    """
    grid = lines.grid
    if grid.count == 0:
        return
    dialect = _dialect(session)
    start, end = _at(grid.start_s), _at(grid.end_s)
    if lo is None:
        lo = start - timedelta(seconds=MAX_INTERVAL_S)
    step_us = grid.step_us
    base_us = epoch_us(lo) // step_us * step_us  # a bucket edge: every row is at or after it
    base_bucket = base_us // step_us
    # Rows ending before the window add nothing (their buckets are outside the grid): worth
    # filtering out only when many start before it, and the filter misleads the planner's
    # row estimates (on a job's whole span it is always true).
    reach = " AND end_at > :ws" if start - lo > _FILTER_REACH_AFTER else ""
    names = ", ".join(alias for alias, _ in keys)
    apart = "".join(f", {column}" for column in split_by)
    # Only rows crossing an edge are kept apart by the split_by columns.
    apart_keys = "".join(f", CASE WHEN b_last > b THEN {column} END AS apart_{column}"
                         for column in split_by)
    apart_names = "".join(f", apart_{column}" for column in split_by)
    sql = f"""
        SELECT {names}, CASE WHEN b_last > b THEN s ELSE b END AS k1,
               CASE WHEN b_last > b THEN e ELSE -1 END AS k2{apart_keys},
               SUM(energy_uj) AS energy_uj
        FROM (
            SELECT {names}{apart}, energy_uj, s, e, s / :step_us AS b,
                   (e - 1) / :step_us2 AS b_last
            FROM (
                SELECT {", ".join(f"{expr} AS {alias}" for alias, expr in keys)}{apart},
                       energy_uj, {since_base_sql(dialect, "start_at", "base")} AS s,
                       {since_base_sql(dialect, "end_at", "base2")} AS e
                FROM {_EI}
                WHERE {where} AND start_at >= :lo AND start_at < :hi{reach}
            ) AS r0
        ) AS r
        GROUP BY {names}, k1, k2{apart_names}
    """
    times = ["lo", "hi"] + (["ws"] if reach else [])
    values = {**params, "step_us": step_us, "step_us2": step_us, "lo": lo, "hi": end}
    if reach:
        values["ws"] = start
    if dialect == "postgresql":
        times += ["base", "base2"]
        base = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=base_us)
        values.update(base=base, base2=base)
        # Compiling a plan for a few hundred thousand rows costs more than it saves; and the
        # groups (at most lines × buckets, plus an edge-crossing interval per line and edge)
        # fit a hash table in memory, which the planner's coarse estimate of them (the bucket
        # is an expression) otherwise trades for a sort spilled to disk.
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    else:
        values.update(base_us=base_us, base2_us=base_us)
    stmt = text(sql).bindparams(*(_time(name) for name in times),
                                *(bindparam(n, expanding=True) for n in expanding))
    rows = session.execute(stmt, values).all()
    width, first, count = len(keys), grid.first, grid.count
    # Tens of thousands of rows: the loop of Lines.add_bucket/add_interval, inlined.
    for row in rows:
        line = lines.line(tuple(row[:width]))
        energy, covered = line.energy_uj, line.covered
        k1, k2, energy_uj = int(row[width]), int(row[width + 1]), int(row[-1])
        parts = ([(base_bucket + k1, energy_uj)] if k2 < 0
                 else apportion(base_us + k1, base_us + k2, energy_uj, step_us))
        for bucket, part in parts:
            index = bucket - first
            if 0 <= index < count:
                energy[index] += part
                covered[index] = True


def earliest_reaching(session: Session, start: datetime, match: tuple[Any, ...],
                      lines: Select[Any]) -> datetime:
    """Return a lower bound of the start of every interval of ``lines`` reaching ``start``.

    Intervals of one source on one node never overlap in time (ingest refuses that), so of
    each line only its latest interval starting before ``start`` can reach into the window:
    one backward index probe per line (``lines``: rows with ``cluster`` and ``source``
    columns; ``match``: the further conditions tying an interval to a row of it) instead of
    reading ``MAX_INTERVAL_S`` of rows before the window.
    """
    floor = start - timedelta(seconds=MAX_INTERVAL_S)
    keys = lines.subquery()
    ei = EnergyInterval
    latest = (
        select(func.max(ei.start_at))
        .where(ei.cluster == keys.c.cluster, ei.source == keys.c.source,
               *(_rebind(cond, keys) for cond in match),
               ei.start_at < start, ei.start_at >= floor)
        .scalar_subquery()
    )
    found = _as_time(session.scalar(select(func.min(latest)).select_from(keys)))
    return start if found is None else found


def _rebind(condition: Any, keys: Any) -> Any:
    """``energy_interval.x == table.y`` with ``table.y`` taken from the subquery ``keys``."""
    return condition.left == keys.c[condition.right.name]


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True)
class JobSpan:
    """A job's row (owner, times) and the span of its stored energy."""

    cluster: str
    job_id: str
    user: str | None
    uid: int | None
    account: str | None
    start_at: datetime | None
    end_at: datetime | None
    first_at: datetime | None  # earliest start of an interval with energy of the job
    last_at: datetime | None  # latest end of one


def find_jobs(session: Session, job_id: str, cluster: str | None) -> list[JobSpan]:
    """Return the jobs with this id (on ``cluster`` if given), with their energy's span."""
    je = JobEnergy
    first = (select(func.min(je.first_at))
             .where(je.cluster == Job.cluster, je.job_id == Job.job_id).scalar_subquery())
    last = (select(func.max(je.last_at))
            .where(je.cluster == Job.cluster, je.job_id == Job.job_id).scalar_subquery())
    stmt = select(Job.cluster, Job.job_id, Job.user, Job.uid, Job.account, Job.start_at,
                  Job.end_at, first.label("first_at"), last.label("last_at")).where(
        Job.job_id == job_id)
    if cluster is not None:
        stmt = stmt.where(Job.cluster == cluster)
    out = []
    for row in session.execute(stmt.order_by(Job.cluster)):
        values = list(row)
        # Aggregates over a UtcDateTime come back untyped (naive text on SQLite).
        values[7], values[8] = _as_time(values[7]), _as_time(values[8])
        out.append(JobSpan(*values))
    return out


def _as_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def job_interval_lines(session: Session, job: JobSpan, lines: Lines,
                       raw_from: datetime | None = None) -> None:
    """Fill per (node, component, source) lines of ``job`` from its intervals (those starting
    at or after ``raw_from`` only: the earlier ones are in its minutes)."""
    assert job.first_at is not None
    start = _at(lines.grid.start_s)
    lo = job.first_at if raw_from is None else max(job.first_at, raw_from)
    if lo >= _at(lines.grid.end_s):
        return
    if start > lo:
        je = JobEnergy
        lo = max(lo, earliest_reaching(
            session, start, (EnergyInterval.job_id == je.job_id, EnergyInterval.node == je.node),
            select(je.cluster, je.job_id, je.node, je.source)
            .where(je.cluster == job.cluster, je.job_id == job.job_id)))
    fill_lines(session, lines, [("node", "node"), ("component", "component"),
                                ("source", "source")],
               "cluster = :cluster AND job_id = :job_id",
               {"cluster": job.cluster, "job_id": job.job_id}, lo=lo)


def job_minute_lines(session: Session, job: JobSpan, lines: Lines) -> None:
    """Fill per (node, component, source) lines of ``job`` from its ``job_energy_minute``
    rows: one GROUP BY per line and bucket through the key ``(cluster, job_id, minute_at)``.

    The grid's step is whole minutes and its edges are minute edges, so each minute lies in
    one bucket: no split, the buckets add up to the minutes exactly.
    """
    grid = lines.grid
    if grid.count == 0:
        return
    assert grid.step_s % 60 == 0, grid.step_s
    dialect = _dialect(session)
    base_us = grid.start_s * 1_000_000  # a bucket edge at or before every minute read
    sql = f"""
        SELECT node, component, source,
               {since_base_sql(dialect, "minute_at", "base")} / :step_us AS b,
               SUM(energy_uj) AS energy_uj
        FROM {JobEnergyMinute.__tablename__}
        WHERE cluster = :cluster AND job_id = :job_id AND minute_at >= :lo AND minute_at < :hi
        GROUP BY node, component, source, b
    """
    times = ["lo", "hi"]
    values: dict[str, Any] = {"cluster": job.cluster, "job_id": job.job_id,
                              "step_us": grid.step_us, "lo": _at(grid.start_s),
                              "hi": _at(grid.end_s)}
    if dialect == "postgresql":
        times.append("base")
        values["base"] = _at(grid.start_s)
    else:
        values["base_us"] = base_us
    stmt = text(sql).bindparams(*(_time(name) for name in times))
    for node, component, source, bucket, energy_uj in session.execute(stmt, values):
        lines.add_bucket((node, component, source), grid.first + int(bucket), int(energy_uj))


def minute_marks(session: Session) -> tuple[datetime | None, datetime | None]:
    """Return ``(from, through)`` of the job minute series: the raw intervals starting before
    ``through`` are in ``job_energy_minute`` (None: none rolled up), those before ``from``
    were dropped before it existed (None: none)."""
    rows = dict(session.execute(select(IntervalRetention.name, IntervalRetention.kept_from)
                                .where(IntervalRetention.name.in_([MINUTES_FROM,
                                                                   ROLLED_THROUGH]))).all())
    return _as_time(rows.get(MINUTES_FROM)), _as_time(rows.get(ROLLED_THROUGH))


def job_line_keys(session: Session, job: JobSpan) -> list[tuple[str, str, str]]:
    """Return the job's (node, component, source) keys, whether or not in the window."""
    je = JobEnergy
    return [tuple(row) for row in session.execute(  # type: ignore[misc]
        select(je.node, je.component, je.source)
        .where(je.cluster == job.cluster, je.job_id == job.job_id))]


def job_hour_lines(session: Session, job: JobSpan, lines: Lines, key: tuple[object, ...]
                   ) -> None:
    """Fill one line of ``job`` from its ``job_energy_hour`` rows (whole hours)."""
    grid = lines.grid
    h = JobEnergyHour
    rows = session.execute(
        select(h.hour_at, h.energy_uj).where(
            h.cluster == job.cluster, h.job_id == job.job_id,
            h.hour_at >= _at(grid.start_s), h.hour_at < _at(grid.end_s)))
    for hour_at, energy_uj in rows:
        lines.add_bucket(key, epoch_us(hour_at) // grid.step_us, int(energy_uj))
    if not lines.by_key:
        lines.line(key)


def job_phases(session: Session, job: JobSpan) -> list[dict[str, Any]]:
    """Return the job's phases with their first and last interval times, in time order."""
    p = JobPhase
    rows = session.execute(
        select(p.phase, p.model, p.first_at, p.last_at)
        .where(p.cluster == job.cluster, p.job_id == job.job_id)
        .order_by(p.first_at, p.phase, p.model))
    return [{"phase": phase, "model": model or None, "start": first, "end": last}
            for phase, model, first, last in rows]


# ---------------------------------------------------------------------------------------------
# Nodes and clusters


def node_clusters(session: Session, node: str, cluster: str | None) -> list[str]:
    """Return the clusters with a node of this name (``cluster`` alone if it has it)."""
    stmt = select(NodeProgress.cluster).where(NodeProgress.node == node)
    if cluster is not None:
        stmt = stmt.where(NodeProgress.cluster == cluster)
    return list(session.scalars(stmt.order_by(NodeProgress.cluster)))


def cluster_nodes(session: Session, cluster: str) -> list[str]:
    """Return the cluster's nodes that ever sent intervals."""
    return list(session.scalars(select(NodeProgress.node).where(NodeProgress.cluster == cluster)
                                .order_by(NodeProgress.node)))


def node_components(session: Session, cluster: str, nodes: list[str] | None = None
                    ) -> list[str]:
    """Return the components the node (or any of the ``nodes``) ever measured."""
    ne = NodeEnergy
    stmt = select(ne.component).where(ne.cluster == cluster).distinct()
    if nodes is not None:
        stmt = stmt.where(ne.node.in_(nodes))
    return sorted(session.scalars(stmt))


def node_lines(session: Session, cluster: str, node: str, lines: Lines) -> None:
    """Fill per (component, unattributed) lines of one node (1: unattributed, 0: jobs').

    The attributed line is split per job share: bucket by bucket, it is the sum of the job
    series' lines of that node and component.
    """
    ne = NodeEnergy
    lo = earliest_reaching(
        session, _at(lines.grid.start_s), (EnergyInterval.node == ne.node,),
        select(ne.cluster, ne.node, ne.source).where(ne.cluster == cluster, ne.node == node))
    fill_lines(session, lines, [("component", "component"),
                                ("unattributed", "CASE WHEN job_id IS NULL THEN 1 ELSE 0 END")],
               "cluster = :cluster AND node = :node", {"cluster": cluster, "node": node},
               lo=lo, split_by=("source", "job_id"))


def cluster_lines(session: Session, cluster: str, nodes: list[str], lines: Lines) -> None:
    """Fill per-component lines of the cluster's measured energy (``psys`` left out: it
    overlaps the CPU package and DRAM domains).

    An interval crossing a bucket edge is split once for all its shares on every node with
    the same span: each bucket is exact to the line's total, but may differ by a few µJ from
    the sum of the nodes' buckets (whose shares are split one by one).
    """
    if not nodes:
        return
    fill_lines(session, lines, [("component", "component")],
               "cluster = :cluster AND node IN :nodes AND component IN :components",
               {"cluster": cluster, "nodes": nodes, "components": list(ATTRIBUTED_COMPONENTS)},
               expanding=("nodes", "components"))


def node_hour_lines(session: Session, cluster: str, node: str, lines: Lines) -> None:
    """Fill the lines of :func:`node_lines` from the node's ``node_energy_hour`` rows (the
    grid's step: whole hours)."""
    grid = lines.grid
    h = NodeEnergyHour
    rows = session.execute(
        select(h.component, h.hour_at, h.measured_uj, h.unattributed_uj).where(
            h.cluster == cluster, h.node == node, h.hour_at >= _at(grid.start_s),
            h.hour_at < _at(grid.end_s)))
    for component, hour_at, measured_uj, unattributed_uj in rows:
        bucket = epoch_us(hour_at) // grid.step_us
        lines.add_bucket((component, 0), bucket, int(measured_uj) - int(unattributed_uj))
        lines.add_bucket((component, 1), bucket, int(unattributed_uj))


def cluster_hour_lines(session: Session, cluster: str, lines: Lines) -> None:
    """Fill the lines of :func:`cluster_lines` from ``node_energy_hour``: one GROUP BY over
    the cluster's nodes per (component, hour) through ``(cluster, hour_at)`` (the grid's
    step: whole hours)."""
    grid = lines.grid
    h = NodeEnergyHour
    rows = session.execute(
        select(h.component, h.hour_at, func.sum(h.measured_uj)).where(
            h.cluster == cluster, h.component.in_(ATTRIBUTED_COMPONENTS),
            h.hour_at >= _at(grid.start_s), h.hour_at < _at(grid.end_s))
        .group_by(h.component, h.hour_at))
    for component, hour_at, measured_uj in rows:
        lines.add_bucket((component,), epoch_us(hour_at) // grid.step_us, int(measured_uj))


def retained_from(session: Session) -> datetime | None:
    """Return where the retained raw intervals start (None: nothing was dropped)."""
    value = session.scalar(select(IntervalRetention.kept_from).where(
        IntervalRetention.name == RETAINED))
    return _as_time(value)


def window_us(start: datetime, end: datetime) -> tuple[int, int]:
    """Return ``[start, end)`` in epoch µs."""
    return epoch_us(start), epoch_us(end)

