"""The ``energy_interval`` rows of a batch: written in bulk, and checked against those stored.

PostgreSQL gets them by COPY through the raw DBAPI connection of the caller's transaction
(several times faster than INSERT); SQLite by executemany. Before writing, a batch's spans
are checked against the node's stored spans so energy is never counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, select, tuple_
from sqlalchemy import exc as sa_exc

from jobenergy.collector.models import EnergyInterval, IntervalRetention, NodeProgress
from jobenergy.collector.plan import Plan
from jobenergy.collector.sql import IngestRejected
from jobenergy.core.schema import MAX_INTERVAL_S, Batch

_INTERVAL_COLUMNS = (
    "cluster",
    "node",
    "job_id",
    "component",
    "source",
    "start_at",
    "end_at",
    "energy_uj",
    "estimated",
)
_COPY_SQL = f"COPY {EnergyInterval.__tablename__} ({', '.join(_INTERVAL_COLUMNS)}) FROM STDIN"
_SQLITE_INSERT_SQL = (
    f"INSERT INTO {EnergyInterval.__tablename__} ({', '.join(_INTERVAL_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _INTERVAL_COLUMNS)})"
)
_COPY_NULL = "\\N"
#: SQLAlchemy's storage format for DateTime on SQLite (naive UTC), so raw inserts match ORM ones.
_SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _copy_escape(value: str) -> str:
    """Escape a value for PostgreSQL's COPY text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def write_intervals_pg(conn: Connection, parts: Sequence[tuple[Batch, Plan]]) -> None:
    """COPY the rows of each ``(batch, plan)`` in ``parts``: one COPY for all of them."""
    chunks: list[str] = []
    for batch, plan in parts:
        prefix = f"{_copy_escape(batch.cluster)}\t{_copy_escape(batch.node)}\t"
        times = [f"{iv.start.isoformat()}\t{iv.end.isoformat()}" for iv in batch.intervals]
        escaped: dict[str, str] = {}
        for _, _, source, _, _, _ in plan.rows:
            if source not in escaped:
                escaped[source] = _copy_escape(source)
        chunks += [
            f"{prefix}{_COPY_NULL if job_id is None else job_id}\t{component}\t"
            f"{escaped[source]}\t{times[index]}\t{energy_uj}\t{'t' if estimated else 'f'}\n"
            for job_id, component, source, index, energy_uj, estimated in plan.rows
        ]
    if not chunks:
        return
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    import psycopg  # PostgreSQL only; the server extra installs it

    try:
        with dbapi_connection.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
            copy.write("".join(chunks).encode())
    except psycopg.Error as err:
        # The raw COPY bypasses SQLAlchemy: wrap its errors as SQLAlchemy would (DataError,
        # OperationalError, ...) so the route answers 422/503 like for any other statement.
        raise sa_exc.DBAPIError.instance(_COPY_SQL, None, err, psycopg.Error) from err


def write_intervals_sqlite(conn: Connection, parts: Sequence[tuple[Batch, Plan]]) -> None:
    """Insert the rows of each ``(batch, plan)`` in ``parts`` (one executemany)."""
    rows = []
    for batch, plan in parts:
        times = [
            (iv.start.strftime(_SQLITE_TIME_FORMAT), iv.end.strftime(_SQLITE_TIME_FORMAT))
            for iv in batch.intervals
        ]
        cluster, node = batch.cluster, batch.node
        rows += [
            (cluster, node, job_id, component, source, *times[index], energy_uj, int(estimated))
            for job_id, component, source, index, energy_uj, estimated in plan.rows
        ]
    if rows:
        conn.exec_driver_sql(_SQLITE_INSERT_SQL, rows)


def overlap_refusals(conn: Connection, batches: Sequence[Batch]) -> list[IngestRejected | None]:
    """Return, per batch, why it overlaps energy already stored, or None.

    Energy for a span of time already stored for the same node and source is refused: a node
    measures each source once over time, and a second agent configured with the same node
    name, or an interval re-sent under another key, would otherwise count twice.
    ``batches`` are of distinct nodes (one group of ingest, ``collector/ingest.py``), each
    answered alone: two agents with one node name cost their group nothing.

    Cost O(batch), whatever the history: the nodes' high-water marks (``node_progress``,
    read in one query under the nodes' locks, which the caller holds) answer for the usual
    batch, the next one in time (or one wholly before anything stored). Only a batch that
    reaches back into the stored span (out of order: a retry after a newer batch) is checked
    row by row, over its own window; intervals are at most ``MAX_INTERVAL_S`` long (schema),
    which bounds the index range searched.
    """
    np = NodeProgress
    keys = sorted({(batch.cluster, batch.node) for batch in batches})
    marks = {
        (cluster, node): (first_at, last_at)
        for cluster, node, first_at, last_at in conn.execute(
            select(np.cluster, np.node, np.first_at, np.last_at).where(
                tuple_(np.cluster, np.node).in_(keys))
        )
    } if keys else {}
    refusals: list[IngestRejected | None] = []
    for batch in batches:
        try:
            _check_batch(conn, batch, marks.get((batch.cluster, batch.node)))
        except IngestRejected as refusal:
            refusals.append(refusal)
        else:
            refusals.append(None)
    return refusals


def _check_batch(conn: Connection, batch: Batch,
                 marks: tuple[datetime, datetime] | None) -> None:
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for interval in batch.intervals:
        for src in interval.sources:
            spans.setdefault(src.source, []).append((interval.start, interval.end))
    if not spans:
        return
    first_start = min(start for pairs in spans.values() for start, _ in pairs)
    last_end = max(end for pairs in spans.values() for _, end in pairs)
    if marks is None or first_start >= marks[1] or last_end <= marks[0]:
        return
    retained_from = conn.execute(
        select(IntervalRetention.kept_from).where(IntervalRetention.name == "energy_interval")
    ).scalar_one_or_none()
    if retained_from is not None and first_start < retained_from:
        raise IngestRejected(
            f"energy on node {batch.node!r} from {first_start.isoformat()} reaches back before "
            f"the retained raw intervals ({retained_from.isoformat()}, db maintain "
            "--retention-days): it cannot be checked against what was stored then"
        )
    lo = batch.intervals[0].start - timedelta(seconds=MAX_INTERVAL_S)
    hi = batch.intervals[-1].end
    stored = conn.execute(
        select(EnergyInterval.source, EnergyInterval.start_at, EnergyInterval.end_at)
        .where(
            EnergyInterval.cluster == batch.cluster,
            EnergyInterval.node == batch.node,
            EnergyInterval.start_at >= lo,
            EnergyInterval.start_at < hi,
            EnergyInterval.source.in_(list(spans)),
        )
        .distinct()
    ).all()
    for source, start_at, end_at in stored:
        for start, end in spans[source]:
            if start < end_at and start_at < end:
                raise IngestRejected(
                    f"energy for source {source!r} on node {batch.node!r} from "
                    f"{start.isoformat()} to {end.isoformat()} overlaps energy already stored "
                    f"({start_at.isoformat()} to {end_at.isoformat()}): two agents with one "
                    "node name, or data re-sent under another batch key?"
                )
