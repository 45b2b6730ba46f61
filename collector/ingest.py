"""Idempotent ingest of agent batches and Slurm job events.

One batch is one transaction (the caller's): its key goes into ``ingested_batch``, its shares
into ``energy_interval`` (COPY on PostgreSQL, executemany on SQLite) and its per-key sums into
the ``job_energy`` / ``node_energy`` totals by upsert. A retried batch finds its key already
there and is acknowledged as a duplicate without touching anything (DESIGN.md decision 7).
Each batch's rows are aggregated in Python first so that each total is upserted once per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobenergy.collector.models import (
    BIGINT_MAX,
    EnergyInterval,
    IngestedBatch,
    Job,
    JobEnergy,
    NodeEnergy,
)
from jobenergy.core.errors import JobEnergyError
from jobenergy.core.schema import Batch, JobEvent

logger = logging.getLogger(__name__)

_INTERVAL_COLUMNS = (
    "cluster", "node", "job_id", "component", "source", "start_at", "end_at", "energy_uj",
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


class IngestRejected(JobEnergyError):
    """Input that passed the wire schema but cannot be stored (the caller answers 422)."""


@dataclass(frozen=True)
class IngestResult:
    """Outcome of :func:`ingest_batch`.

    Attributes:
        duplicate: The batch key was already stored; nothing was written.
        records: ``energy_interval`` rows written by this call (0 for a duplicate).
    """

    duplicate: bool
    records: int


@dataclass
class _Plan:
    """A batch flattened into rows and per-key sums, before any database work."""

    # (job_id | None, component, source, interval index, energy_uj, estimated)
    rows: list[tuple[str | None, str, str, int, int, bool]] = field(default_factory=list)
    # (job_id, component, source) -> [energy, estimated, intervals, covered_s, first, last,
    #                                  wraps, resets, device_name]
    job_totals: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)
    # (component, source) -> [measured, unattributed, intervals, first, last]
    node_totals: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    job_uids: dict[str, int | None] = field(default_factory=dict)


def _plan(batch: Batch) -> _Plan:
    plan = _Plan()
    rows = plan.rows
    job_totals = plan.job_totals
    node_totals = plan.node_totals
    job_uids = plan.job_uids
    for index, interval in enumerate(batch.intervals):
        start, end = interval.start, interval.end
        duration_s = (end - start).total_seconds()
        for sample in interval.jobs:
            if sample.uid is not None or sample.job_id not in job_uids:
                job_uids[sample.job_id] = sample.uid
        for src in interval.sources:
            component, source, estimated = src.component, src.source, src.estimated
            node_key = (component, source)
            node_total = node_totals.get(node_key)
            if node_total is None:
                node_totals[node_key] = [src.measured_uj, src.unattributed_uj, 1, start, end]
            else:
                node_total[0] += src.measured_uj
                node_total[1] += src.unattributed_uj
                node_total[2] += 1
                if end > node_total[4]:
                    node_total[4] = end
            for job_id, energy_uj in src.jobs_uj.items():
                rows.append((job_id, component, source, index, energy_uj, estimated))
                key = (job_id, component, source)
                total = job_totals.get(key)
                if total is None:
                    job_totals[key] = [
                        energy_uj, energy_uj if estimated else 0, 1, duration_s, start, end,
                        src.wraps, src.resets, src.device_name,
                    ]
                else:
                    total[0] += energy_uj
                    if estimated:
                        total[1] += energy_uj
                    total[2] += 1
                    total[3] += duration_s
                    if end > total[5]:
                        total[5] = end
                    total[6] += src.wraps
                    total[7] += src.resets
                    if src.device_name is not None:
                        total[8] = src.device_name
                if job_id not in job_uids:
                    job_uids[job_id] = None
            # The node's own account; a source with no job shares is stored even at 0 µJ so
            # that its measurement is on record.
            if src.unattributed_uj or not src.jobs_uj:
                rows.append((None, component, source, index, src.unattributed_uj, estimated))
    for totals in (job_totals.values(), node_totals.values()):
        for total in totals:
            if total[0] > BIGINT_MAX or total[1] > BIGINT_MAX:
                raise IngestRejected(f"energy total above {BIGINT_MAX} µJ in one batch")
    return plan


def _insert(conn: Connection) -> Any:
    """Return the dialect's ``insert`` construct (both have ``on_conflict_do_*``)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert
    if conn.dialect.name == "sqlite":
        return sqlite.insert
    raise IngestRejected(f"unsupported database dialect {conn.dialect.name!r}")


def _least_greatest(conn: Connection) -> tuple[Any, Any]:
    # SQLite's two-argument min()/max() are scalar functions, PostgreSQL spells them
    # least()/greatest().
    if conn.dialect.name == "sqlite":
        return func.min, func.max
    return func.least, func.greatest


def _copy_escape(value: str) -> str:
    """Escape a value for PostgreSQL's COPY text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _write_intervals_pg(conn: Connection, batch: Batch, plan: _Plan) -> None:
    prefix = f"{_copy_escape(batch.cluster)}\t{_copy_escape(batch.node)}\t"
    times = [f"{iv.start.isoformat()}\t{iv.end.isoformat()}" for iv in batch.intervals]
    escaped: dict[str, str] = {}
    for _, _, source, _, _, _ in plan.rows:
        if source not in escaped:
            escaped[source] = _copy_escape(source)
    data = "".join(
        [
            f"{prefix}{_COPY_NULL if job_id is None else job_id}\t{component}\t{escaped[source]}\t"
            f"{times[index]}\t{energy_uj}\t{'t' if estimated else 'f'}\n"
            for job_id, component, source, index, energy_uj, estimated in plan.rows
        ]
    )
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    with dbapi_connection.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        copy.write(data.encode())


def _write_intervals_sqlite(conn: Connection, batch: Batch, plan: _Plan) -> None:
    times = [
        (iv.start.strftime(_SQLITE_TIME_FORMAT), iv.end.strftime(_SQLITE_TIME_FORMAT))
        for iv in batch.intervals
    ]
    cluster, node = batch.cluster, batch.node
    conn.exec_driver_sql(
        _SQLITE_INSERT_SQL,
        [
            (cluster, node, job_id, component, source, *times[index], energy_uj, int(estimated))
            for job_id, component, source, index, energy_uj, estimated in plan.rows
        ],
    )


def _upsert_jobs(conn: Connection, batch: Batch, plan: _Plan, now: datetime) -> None:
    insert = _insert(conn)
    stmt = insert(Job)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Job.cluster, Job.job_id],
        set_={Job.uid: stmt.excluded.uid, Job.updated_at: stmt.excluded.updated_at},
        where=Job.uid.is_(None) & stmt.excluded.uid.is_not(None),
    )
    # Sorted keys: concurrent batches of one multi-node job lock rows in the same order.
    conn.execute(
        stmt,
        [
            {"cluster": batch.cluster, "job_id": job_id, "uid": uid, "updated_at": now}
            for job_id, uid in sorted(plan.job_uids.items())
        ],
    )


def _upsert_job_energy(conn: Connection, batch: Batch, plan: _Plan) -> None:
    least, greatest = _least_greatest(conn)
    stmt = _insert(conn)(JobEnergy)
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[
            JobEnergy.cluster, JobEnergy.job_id, JobEnergy.node, JobEnergy.component,
            JobEnergy.source,
        ],
        set_={
            JobEnergy.energy_uj: JobEnergy.energy_uj + new.energy_uj,
            JobEnergy.estimated_uj: JobEnergy.estimated_uj + new.estimated_uj,
            JobEnergy.intervals: JobEnergy.intervals + new.intervals,
            JobEnergy.covered_s: JobEnergy.covered_s + new.covered_s,
            JobEnergy.first_at: least(JobEnergy.first_at, new.first_at),
            JobEnergy.last_at: greatest(JobEnergy.last_at, new.last_at),
            JobEnergy.wraps: JobEnergy.wraps + new.wraps,
            JobEnergy.resets: JobEnergy.resets + new.resets,
            JobEnergy.device_name: func.coalesce(new.device_name, JobEnergy.device_name),
        },
    )
    conn.execute(
        stmt,
        [
            {
                "cluster": batch.cluster, "job_id": job_id, "node": batch.node,
                "component": component, "source": source, "energy_uj": t[0],
                "estimated_uj": t[1], "intervals": t[2], "covered_s": t[3], "first_at": t[4],
                "last_at": t[5], "wraps": t[6], "resets": t[7], "device_name": t[8],
            }
            for (job_id, component, source), t in sorted(plan.job_totals.items())
        ],
    )


def _upsert_node_energy(conn: Connection, batch: Batch, plan: _Plan) -> None:
    least, greatest = _least_greatest(conn)
    stmt = _insert(conn)(NodeEnergy)
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[
            NodeEnergy.cluster, NodeEnergy.node, NodeEnergy.component, NodeEnergy.source,
        ],
        set_={
            NodeEnergy.measured_uj: NodeEnergy.measured_uj + new.measured_uj,
            NodeEnergy.unattributed_uj: NodeEnergy.unattributed_uj + new.unattributed_uj,
            NodeEnergy.intervals: NodeEnergy.intervals + new.intervals,
            NodeEnergy.first_at: least(NodeEnergy.first_at, new.first_at),
            NodeEnergy.last_at: greatest(NodeEnergy.last_at, new.last_at),
        },
    )
    conn.execute(
        stmt,
        [
            {
                "cluster": batch.cluster, "node": batch.node, "component": component,
                "source": source, "measured_uj": t[0], "unattributed_uj": t[1],
                "intervals": t[2], "first_at": t[3], "last_at": t[4],
            }
            for (component, source), t in sorted(plan.node_totals.items())
        ],
    )


def _check_text(batch: Batch) -> None:
    # PostgreSQL text cannot hold NUL; reject it here for both backends alike.
    names = [batch.cluster, batch.node, batch.boot_id, batch.agent_version or ""]
    for interval in batch.intervals:
        for src in interval.sources:
            names.append(src.source)
            names.append(src.device_name or "")
    if any("\x00" in name for name in names):
        raise IngestRejected("text fields must not contain NUL characters")


def ingest_batch(db: Session | Connection, batch: Batch) -> IngestResult:
    """Store ``batch`` in the caller's transaction, once.

    Does not commit: the caller commits (or rolls back on any error, storing nothing).

    Args:
        db: A Session or Connection inside an open transaction.
        batch: A validated batch (conservation and sanity are checked by the schema).

    Returns:
        ``IngestResult(duplicate=True, records=0)`` when the batch key is already stored,
        else the number of ``energy_interval`` rows written.

    Raises:
        IngestRejected: The batch cannot be stored (totals out of range, NUL in a name).
    """
    conn = db.connection() if isinstance(db, Session) else db
    _check_text(batch)
    plan = _plan(batch)
    now = datetime.now(UTC)
    claim = (
        _insert(conn)(IngestedBatch)
        .values(
            cluster=batch.cluster, node=batch.node, boot_id=batch.boot_id, seq=batch.seq,
            received_at=now, agent_version=batch.agent_version,
            intervals=len(batch.intervals), records=len(plan.rows),
        )
        .on_conflict_do_nothing(
            index_elements=[
                IngestedBatch.cluster, IngestedBatch.node, IngestedBatch.boot_id,
                IngestedBatch.seq,
            ]
        )
        .returning(IngestedBatch.seq)
    )
    if conn.execute(claim).first() is None:
        logger.info(
            "duplicate batch cluster=%s node=%s boot_id=%s seq=%s",
            batch.cluster, batch.node, batch.boot_id, batch.seq,
        )
        return IngestResult(duplicate=True, records=0)
    if plan.rows:
        if conn.dialect.name == "postgresql":
            _write_intervals_pg(conn, batch, plan)
        else:
            _write_intervals_sqlite(conn, batch, plan)
    if plan.job_uids:
        _upsert_jobs(conn, batch, plan, now)
    if plan.job_totals:
        _upsert_job_energy(conn, batch, plan)
    if plan.node_totals:
        _upsert_node_energy(conn, batch, plan)
    return IngestResult(duplicate=False, records=len(plan.rows))


def _end_state(event: JobEvent) -> str:
    """Return the state an end event implies when it names none."""
    if event.exit_code is None:
        return "ENDED"
    return "COMPLETED" if str(event.exit_code) in ("0", "0:0") else "FAILED"


def apply_job_event(session: Session, event: JobEvent) -> Job:
    """Merge a job start/end event into the ``job`` row, in the caller's transaction.

    A start sets ``start_at``, an end sets ``end_at``, ``state`` and ``exit_code``. Fields the
    event leaves out (None) never erase what is known; tags are merged, the event winning.
    Events may arrive in any order and more than once.

    Args:
        session: Session inside an open transaction (not committed here).
        event: The validated event.

    Returns:
        The updated job row.

    Raises:
        IngestRejected: The event would make the job end before it starts.
    """
    conn = session.connection()
    now = datetime.now(UTC)
    # Make sure the row exists, then lock it: two events for a new job cannot both insert.
    conn.execute(
        _insert(conn)(Job)
        .values(cluster=event.cluster, job_id=event.job_id, updated_at=now)
        .on_conflict_do_nothing(index_elements=[Job.cluster, Job.job_id])
    )
    job = session.scalars(
        select(Job)
        .where(Job.cluster == event.cluster, Job.job_id == event.job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    start_at = event.time if event.event == "start" else job.start_at
    end_at = event.time if event.event == "end" else job.end_at
    if start_at is not None and end_at is not None and end_at < start_at:
        raise IngestRejected(
            f"job {event.job_id} on cluster {event.cluster}: end {end_at.isoformat()} is "
            f"before start {start_at.isoformat()}"
        )
    job.start_at, job.end_at = start_at, end_at
    for name in ("user", "uid", "account", "partition", "name", "nodes", "gpus", "comment"):
        value = getattr(event, name)
        if value is not None:
            setattr(job, name, value)
    if event.exit_code is not None:
        job.exit_code = str(event.exit_code)
    if event.state is not None:
        job.state = event.state
    elif event.event == "start" and job.state is None:
        job.state = "RUNNING"
    elif event.event == "end" and job.state in (None, "RUNNING"):
        job.state = _end_state(event)
    if event.tags:
        job.tags = {**(job.tags or {}), **event.tags}
    job.updated_at = now
    session.flush()
    return job
