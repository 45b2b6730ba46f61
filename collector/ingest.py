"""Idempotent ingest of agent batches (job events: ``collector/events.py``).

A group of batches of distinct nodes is stored in one transaction, the caller's (one batch
alone, or several gathered by ``collector/group_commit.py``), and what is stored is what
storing them one by one stores. A batch's key goes into ``ingested_batch``, its shares
into ``energy_interval`` (COPY on PostgreSQL, executemany on SQLite) and its per-key sums
into the ``job`` summary and the ``job_energy`` / ``node_energy`` totals by upsert, its
per-job hours into ``job_energy_hour`` (with facility energy and CO2e, ``collector/hours.py``),
its per-node hours into ``node_energy_hour`` (``collector/node_hours.py``),
its phases into ``job_phase`` and its per-step energy into ``job_step_energy``
(``collector/steps.py``); the node's high-water mark into ``node_progress``, the jobs its agent
saw (with or without energy sources) into ``job_node``, and the leaderboard parts of annotated
jobs into ``job_board_part`` (``collector/board.py``). A retried batch finds its key already
there and is acknowledged as a duplicate without touching anything (DESIGN.md decision 7);
the key is stored with the SHA-256 of the batch's content, and a key that comes back with
other content is a conflict (:class:`BatchConflict`, 409), never a duplicate (decision 14).
Each group's rows are aggregated in Python first so that each total is upserted once per
group.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session

from jobenergy.collector.board import refresh_board
from jobenergy.collector.factors import DEFAULTS
from jobenergy.collector.hours import write_hours
from jobenergy.collector.intervals import (
    overlap_refusals,
    write_intervals_pg,
    write_intervals_sqlite,
)
from jobenergy.collector.models import (
    IngestedBatch,
    Job,
    JobEnergy,
    JobNode,
    NodeEnergy,
    NodeProgress,
)
from jobenergy.collector.node_hours import add_node_hours
from jobenergy.collector.phases import write_phases
from jobenergy.collector.plan import JobSummary, Plan, fold_summary, plan_batch
from jobenergy.collector.sql import (
    IngestRejected,
    dialect_insert,
    least_greatest,
    lock_for_ingest,
)
from jobenergy.collector.steps import plan_steps, write_steps
from jobenergy.core.errors import JobEnergyError
from jobenergy.core.schema import Batch

__all__ = [
    "BatchConflict", "IngestRejected", "IngestResult", "Prepared", "content_hash", "ingest_batch",
    "ingest_group", "prepare",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Outcome of :func:`ingest_batch`.

    Attributes:
        duplicate: The batch key was already stored; nothing was written.
        records: ``energy_interval`` rows written by this call (0 for a duplicate).
    """

    duplicate: bool
    records: int


class BatchConflict(JobEnergyError):
    """The batch's key is stored with other content (the caller answers 409, stores nothing)."""


def content_hash(batch: Batch) -> str:
    """Return the SHA-256 (hex) of the batch's canonical JSON.

    Canonical: the validated batch as the schema writes it (fields in schema order, times in
    UTC, defaults filled in, no spaces), so the same content hashes alike however it was
    encoded on the wire (gzip, spacing, field order, time zones); maps (``jobs_uj``, tags, ...)
    keep the order they were sent in, as a retry from the agent's spool does. Serialised by
    pydantic-core: ~10 µs per interval of four sources, small beside storing it.
    """
    return hashlib.sha256(batch.model_dump_json().encode()).hexdigest()


def _upsert_jobs(conn: Connection, parts: Sequence[Prepared],
                 now: datetime) -> dict[str, list[str]]:
    """Create or update the jobs' rows and add the batches to their summary.

    Runs first among the per-job writes: the upsert locks each job row (in sorted order, so
    concurrent groups of batches, and batches of one multi-node job, cannot deadlock) until
    the transaction ends, which serialises the read-modify-write of the job's hours and
    phases. A job in several batches of the group gets one row: their summaries folded.

    Returns, per cluster, the jobs that are annotated (have ``job_phase`` rows, from these
    batches or earlier ones): only those have leaderboard parts to refresh.
    """
    jobs: dict[tuple[str, str], JobSummary] = {}
    for p in parts:
        for job_id, summary in p.plan.jobs.items():
            key = (p.batch.cluster, job_id)
            if key in jobs:
                fold_summary(jobs[key], summary)
            else:
                jobs[key] = replace(summary)
    if not jobs:
        return {}
    returned = conn.execute(
        _jobs_upsert(conn.dialect.name),
        [
            {
                "cluster": cluster,
                "job_id": job_id,
                "uid": s.uid,
                "updated_at": now,
                "begin_at": s.begin_at,
                "model": s.model,
                "phase": s.phase,
                "energy_uj": s.energy_uj,
                "gpu_uj": s.gpu_uj,
                "gpu_s": s.gpu_s,
                "facility_uj": 0,
                "co2e_ug": 0,
                "samples": s.samples,
                "annotated": s.annotated,
            }
            for (cluster, job_id), s in sorted(jobs.items())
        ],
    )
    annotated: dict[str, list[str]] = defaultdict(list)
    for cluster, job_id, is_annotated in returned:
        if is_annotated:
            annotated[cluster].append(job_id)
    return {cluster: sorted(ids) for cluster, ids in annotated.items()}


# The upserts are built once per dialect: building one costs more than executing it.
@cache
def _jobs_upsert(dialect: str) -> Any:
    least, _ = least_greatest(dialect)
    stmt = dialect_insert(dialect)(Job)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[Job.cluster, Job.job_id],
        set_={
            Job.uid: func.coalesce(Job.uid, new.uid),
            Job.updated_at: new.updated_at,
            Job.begin_at: func.coalesce(
                Job.start_at, least(func.coalesce(Job.begin_at, new.begin_at), new.begin_at)
            ),
            Job.model: func.coalesce(Job.model, new.model),
            Job.phase: func.coalesce(Job.phase, new.phase),
            Job.annotated: Job.annotated | new.annotated,
            Job.energy_uj: Job.energy_uj + new.energy_uj,
            Job.gpu_uj: Job.gpu_uj + new.gpu_uj,
            Job.gpu_s: Job.gpu_s + new.gpu_s,
            Job.samples: case(
                (new.samples.is_(None), Job.samples),
                else_=func.coalesce(Job.samples, 0) + new.samples,
            ),
            # The batch changes the job's parts: a materialised detail of the job is out of
            # date (collector/job_details.py). Every job with a part in the batch is here.
            Job.parts_version: Job.parts_version + 1,
        },
    ).returning(Job.cluster, Job.job_id, Job.annotated)


def _add_job_factors(conn: Connection, cluster: str, deltas: dict[str, tuple[int, int]]) -> None:
    conn.execute(
        _job_factors_update(),
        [
            {"b_cluster": cluster, "b_job_id": job_id, "b_facility": facility, "b_co2e": co2e}
            for job_id, (facility, co2e) in sorted(deltas.items())
        ],
    )


@cache
def _job_factors_update() -> Any:
    return (
        update(Job)
        .where(Job.cluster == bindparam("b_cluster"), Job.job_id == bindparam("b_job_id"))
        .values(
            facility_uj=Job.facility_uj + bindparam("b_facility"),
            co2e_ug=Job.co2e_ug + bindparam("b_co2e"),
        )
    )


def _upsert_job_energy(conn: Connection, parts: Sequence[Prepared]) -> None:
    rows = [
        {
            "cluster": p.batch.cluster,
            "job_id": job_id,
            "node": p.batch.node,
            "component": component,
            "source": source,
            "energy_uj": t[0],
            "estimated_uj": t[1],
            "intervals": t[2],
            "covered_s": t[3],
            "first_at": t[4],
            "last_at": t[5],
            "wraps": t[6],
            "resets": t[7],
            "device_name": t[8],
        }
        for p in parts
        for (job_id, component, source), t in p.plan.job_totals.items()
    ]
    if rows:
        rows.sort(key=itemgetter("cluster", "job_id", "node", "component", "source"))
        conn.execute(_job_energy_upsert(conn.dialect.name), rows)


@cache
def _job_energy_upsert(dialect: str) -> Any:
    least, greatest = least_greatest(dialect)
    stmt = dialect_insert(dialect)(JobEnergy)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[
            JobEnergy.cluster,
            JobEnergy.job_id,
            JobEnergy.node,
            JobEnergy.component,
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


def _upsert_node_energy(conn: Connection, parts: Sequence[Prepared]) -> None:
    rows = [
        {
            "cluster": p.batch.cluster,
            "node": p.batch.node,
            "component": component,
            "source": source,
            "measured_uj": t[0],
            "unattributed_uj": t[1],
            "intervals": t[2],
            "first_at": t[3],
            "last_at": t[4],
        }
        for p in parts
        for (component, source), t in p.plan.node_totals.items()
    ]
    if rows:
        rows.sort(key=itemgetter("cluster", "node", "component", "source"))
        conn.execute(_node_energy_upsert(conn.dialect.name), rows)


@cache
def _node_energy_upsert(dialect: str) -> Any:
    least, greatest = least_greatest(dialect)
    stmt = dialect_insert(dialect)(NodeEnergy)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[
            NodeEnergy.cluster,
            NodeEnergy.node,
            NodeEnergy.component,
            NodeEnergy.source,
        ],
        set_={
            NodeEnergy.measured_uj: NodeEnergy.measured_uj + new.measured_uj,
            NodeEnergy.unattributed_uj: NodeEnergy.unattributed_uj + new.unattributed_uj,
            NodeEnergy.intervals: NodeEnergy.intervals + new.intervals,
            NodeEnergy.first_at: least(NodeEnergy.first_at, new.first_at),
            NodeEnergy.last_at: greatest(NodeEnergy.last_at, new.last_at),
        },
    )


def _upsert_progress(conn: Connection, parts: Sequence[Prepared]) -> None:
    """Move the nodes' high-water marks; each latest interval's source count goes with it."""
    rows = [
        {"cluster": p.batch.cluster, "node": p.batch.node, "first_at": first, "last_at": last,
         "intervals": intervals, "last_sources": sources}
        for p in sorted(parts, key=lambda p: (p.batch.cluster, p.batch.node))
        if p.plan.progress is not None
        for first, last, intervals, sources in [p.plan.progress]
    ]
    if rows:
        conn.execute(_progress_upsert(conn.dialect.name), rows)


@cache
def _progress_upsert(dialect: str) -> Any:
    least, greatest = least_greatest(dialect)
    stmt = dialect_insert(dialect)(NodeProgress)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[NodeProgress.cluster, NodeProgress.node],
        set_={
            NodeProgress.first_at: least(NodeProgress.first_at, new.first_at),
            NodeProgress.last_at: greatest(NodeProgress.last_at, new.last_at),
            NodeProgress.intervals: NodeProgress.intervals + new.intervals,
            NodeProgress.last_sources: case(
                (new.last_at >= NodeProgress.last_at, new.last_sources),
                else_=NodeProgress.last_sources,
            ),
        },
    )


def _upsert_job_nodes(conn: Connection, parts: Sequence[Prepared]) -> None:
    rows = [
        {"cluster": p.batch.cluster, "job_id": job_id, "node": p.batch.node, "first_at": first,
         "last_at": last, "intervals": intervals}
        for p in parts
        for job_id, (first, last, intervals) in p.plan.job_nodes.items()
    ]
    if rows:
        rows.sort(key=itemgetter("cluster", "job_id", "node"))
        conn.execute(_job_nodes_upsert(conn.dialect.name), rows)


@cache
def _job_nodes_upsert(dialect: str) -> Any:
    least, greatest = least_greatest(dialect)
    stmt = dialect_insert(dialect)(JobNode)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[JobNode.cluster, JobNode.job_id, JobNode.node],
        set_={
            JobNode.first_at: least(JobNode.first_at, new.first_at),
            JobNode.last_at: greatest(JobNode.last_at, new.last_at),
            JobNode.intervals: JobNode.intervals + new.intervals,
        },
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


@dataclass(frozen=True)
class Prepared:
    """A batch checked and planned in Python, before any database work."""

    batch: Batch
    plan: Plan
    digest: str  # content_hash(batch)

    @property
    def key(self) -> tuple[str, str, str, int]:
        b = self.batch
        return (b.cluster, b.node, b.boot_id, b.seq)


def prepare(batch: Batch) -> Prepared:
    """Check and plan ``batch`` (no database work).

    Raises:
        IngestRejected: The batch cannot be stored (a total out of range, NUL in a name).
    """
    _check_text(batch)
    return Prepared(batch, plan_batch(batch), content_hash(batch))


def ingest_batch(db: Session | Connection, batch: Batch) -> IngestResult:
    """Store ``batch`` in the caller's transaction, once.

    Does not commit: the caller commits (or rolls back on any error, storing nothing).

    Args:
        db: A Session or Connection inside an open transaction.
        batch: A validated batch (conservation and sanity are checked by the schema).

    Returns:
        ``IngestResult(duplicate=True, records=0)`` when the batch key is already stored with
        the same content (or, stored before content hashes, with any), else the number of
        ``energy_interval`` rows written.

    Raises:
        IngestRejected: The batch cannot be stored (totals out of range, NUL in a name).
        BatchConflict: The batch key is already stored with other content.
    """
    conn = db.connection() if isinstance(db, Session) else db
    (outcome,) = ingest_group(conn, [prepare(batch)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def ingest_group(conn: Connection, group: Sequence[Prepared]
                 ) -> list[IngestResult | BatchConflict | IngestRejected]:
    """Store the batches of ``group``, of distinct nodes, in the caller's transaction, once.

    Several agents' batches in one transaction cost the statements of one batch, each with
    more rows (collector/group_commit.py): what a row ends up holding is what storing the
    batches one by one gives. Does not commit.

    Returns:
        Per batch, in order: its :class:`IngestResult`; or why that batch alone is not
        stored: the :class:`BatchConflict` of a key stored with other content, the
        :class:`IngestRejected` of energy overlapping energy stored.

    Raises:
        ValueError: Two batches of one node (their overlap is checked only one by one).
        SQLAlchemyError: The database refused something (a total past 64 bits, ...); the
            caller rolls back, and stores the batches one by one to find which.
    """
    nodes = [(p.batch.cluster, p.batch.node) for p in group]
    if len(set(nodes)) != len(nodes):
        raise ValueError("a group holds at most one batch per node")
    now = datetime.now(UTC)
    # Claims first, then the locks of the claimed batches' nodes, the order of every
    # release's ingest (collectors of two releases run at once in a rolling upgrade): the
    # overlap check below, under the locks, sees every batch of these nodes committed.
    claimed = _claim(conn, group, now)
    if claimed:
        lock_for_ingest(conn, [(p.batch.cluster, p.batch.node) for p in group
                               if p.key in claimed], DEFAULTS)
    outcomes: list[IngestResult | BatchConflict | IngestRejected] = [
        IngestResult(duplicate=False, records=len(p.plan.rows)) if p.key in claimed
        else _duplicate_or_conflict(conn, p)
        for p in group
    ]
    new = [(i, p) for i, p in enumerate(group) if p.key in claimed]
    refused, stored = [], []
    for (i, p), refusal in zip(new, overlap_refusals(conn, [p.batch for _, p in new]),
                               strict=True):
        if refusal is None:
            stored.append(p)
        else:
            outcomes[i] = refusal
            refused.append(p)
    if refused:
        _unclaim(conn, refused)
    if stored:
        _store(conn, stored, now)
    return outcomes


def _claim(conn: Connection, group: Sequence[Prepared],
           now: datetime) -> set[tuple[str, str, str, int]]:
    """Insert the batches' keys; return those inserted (the others were stored before).

    In sorted order: two groups claiming the same keys (an agent's retry reaching the other
    collector) wait for each other in one order, never in a cycle; neither holds a node's
    lock yet.
    """
    returned = conn.execute(
        _claim_insert(conn.dialect.name),
        [
            {
                "cluster": p.batch.cluster,
                "node": p.batch.node,
                "boot_id": p.batch.boot_id,
                "seq": p.batch.seq,
                "received_at": now,
                "agent_version": p.batch.agent_version,
                "intervals": len(p.batch.intervals),
                "records": len(p.plan.rows),
                "content_sha256": p.digest,
            }
            for p in sorted(group, key=attrgetter("key"))
        ],
    )
    return {(c, n, b, s) for c, n, b, s in returned}


@cache
def _claim_insert(dialect: str) -> Any:
    ib = IngestedBatch
    return (
        dialect_insert(dialect)(ib)
        .on_conflict_do_nothing(index_elements=[ib.cluster, ib.node, ib.boot_id, ib.seq])
        .returning(ib.cluster, ib.node, ib.boot_id, ib.seq)
    )


def _duplicate_or_conflict(conn: Connection, p: Prepared) -> IngestResult | BatchConflict:
    ib, batch = IngestedBatch, p.batch
    stored = conn.execute(
        select(ib.content_sha256).where(
            ib.cluster == batch.cluster, ib.node == batch.node, ib.boot_id == batch.boot_id,
            ib.seq == batch.seq,
        )
    ).scalar_one_or_none()
    if stored is not None and stored != p.digest:
        return BatchConflict(
            f"conflict: batch key cluster={batch.cluster} node={batch.node} "
            f"boot_id={batch.boot_id} seq={batch.seq} is already stored with other content "
            f"(sha256 {stored[:16]}…, this one {p.digest[:16]}…); nothing stored"
        )
    # A retry after a lost acknowledgement: routine for idempotent transport, not news.
    logger.debug("duplicate batch cluster=%s node=%s boot_id=%s seq=%s",
                 batch.cluster, batch.node, batch.boot_id, batch.seq)
    return IngestResult(duplicate=True, records=0)


def _unclaim(conn: Connection, refused: Sequence[Prepared]) -> None:
    """Remove the keys of batches claimed, then refused (they may come again, corrected)."""
    ib = IngestedBatch
    for p in refused:
        conn.execute(delete(ib).where(
            ib.cluster == p.batch.cluster, ib.node == p.batch.node,
            ib.boot_id == p.batch.boot_id, ib.seq == p.batch.seq))


def _store(conn: Connection, group: Sequence[Prepared], now: datetime) -> None:
    """Write the claimed batches of ``group`` (distinct nodes): each table once for all."""
    parts = [(p.batch, p.plan) for p in group]
    if conn.dialect.name == "postgresql":
        write_intervals_pg(conn, parts)
    else:
        write_intervals_sqlite(conn, parts)
    annotated = _upsert_jobs(conn, group, now)
    _upsert_job_energy(conn, group)
    _upsert_node_energy(conn, group)
    add_node_hours(conn, [(p.batch.cluster, p.batch.node, p.plan.node_hours) for p in group])
    _upsert_progress(conn, group)
    _upsert_job_nodes(conn, group)
    # A (job, hour) in several batches (a multi-node job): their µJ summed, then priced once,
    # as the hour's value depends on its total alone.
    hours: dict[str, dict[tuple[str, datetime], int]] = defaultdict(dict)
    for p in group:
        mine = hours[p.batch.cluster]
        for key, energy_uj in p.plan.job_hours.items():
            mine[key] = mine.get(key, 0) + energy_uj
    for cluster, job_hours in sorted(hours.items()):
        deltas = write_hours(conn, cluster, job_hours)
        if deltas:
            _add_job_factors(conn, cluster, deltas)
    # Phases and steps merge what is stored with what comes (metrics, tags): batch by batch,
    # in order, as one by one. Only annotated jobs and jobs with steps have any.
    for p in group:
        write_phases(conn, p.batch.cluster, p.plan)
        write_steps(conn, p.batch.cluster, plan_steps(p.batch))
    for cluster, job_ids in sorted(annotated.items()):
        # After the job and phase upserts: the parts are computed from both.
        refresh_board(conn, cluster, job_ids)
