"""A settled job's parts, materialised in one row (``job_detail``, PostgreSQL), so that reading
an old job touches two rows instead of seven tables.

A job's JSON (``GET /api/v1/jobs/{id}``, a page of jobs) is built from its per-source totals,
the nodes that saw it, its factor groups, phases and steps: rows of ``job_energy``,
``job_node``, ``job_energy_hour``, ``job_phase`` and ``job_step_energy`` (:data:`LIVE_SQL`).
Read live, that is an index probe and a heap page in each table; with 10 M jobs those tables
are far larger than memory, so a lookup of an old job read 50-80 KiB from disk. Once no batch
has changed a job for :data:`SETTLE`, :func:`materialise` writes the same parts, as the same
JSON, into its ``job_detail`` row; a lookup then reads that row and the job's own.

Exact, never stale, whatever the schedule:

- Every transaction that changes a job's parts adds 1 to ``job.parts_version`` in the same
  transaction: an ingested batch upserts the row of every job it carries
  (``collector/ingest.py``), and a factor recompute updates the rows of the jobs whose hours
  it changed (``collector/hours.py``). A new writer of those tables must do the same.
- :func:`materialise` reads a job's ``parts_version`` and its parts in one statement, so from
  one snapshot, and stores them together. Readers (``api/job_lookup.py``) take the detail
  only where its ``parts_version`` is the job's, else read the parts live. A batch that
  commits while a detail is computed has added 1: that detail is never read.

It takes no lock on ``job``, so it never holds up ingest nor deadlocks with it. The live path
stays the answer for jobs changed recently (their pages are in memory: the batch that changed
them just wrote them), and on SQLite, where nothing is materialised.

A detail is also stored with the :data:`SHAPE` of the SQL that built it, and read only by
code of the same shape: a change of the parts' SQL (:data:`LIVE_SQL`) or of the detail's keys
leaves every stored detail unread until the next run, which goes over every job again (its
``rollup_state`` row, :data:`STATE`, is per shape), replaces it. A migration that changes what
the same SQL returns (a part column's type) must empty ``job_detail`` itself.

The database keeps the count too (a trigger of migration 0021): an update of a job row that
stamps a new ``updated_at`` without adding to ``parts_version`` adds 1. Every writer of parts
stamps it, so parts changed by a collector of an earlier release, still running during a
rolling upgrade, are read live; a Slurm event's stamp only has the job materialised again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, select, text
from sqlalchemy.exc import DBAPIError

from jobenergy.collector.models import RollupState
from jobenergy.collector.periodic import Periodic
from jobenergy.collector.sql import dialect_insert

logger = logging.getLogger(__name__)

#: Each part of a job's JSON, as a correlated subquery of the job row ``p``: one JSON array
#: each, read by primary-key range scans. Timestamps are turned into UTC without zone (ISO
#: 8601 in the JSON). Fixed text, so that nothing is built per request.
LIVE_SQL = {
    "totals": """(SELECT json_agg(json_build_array(
    e.node, e.component, e.source, e.device_name, e.energy_uj, e.estimated_uj, e.intervals,
    e.covered_s, e.wraps, e.resets))
  FROM job_energy e WHERE e.cluster = p.cluster AND e.job_id = p.job_id)""",
    "seen": """(SELECT json_agg(n.node)
  FROM job_node n WHERE n.cluster = p.cluster AND n.job_id = p.job_id)""",
    "groups": """(SELECT json_agg(json_build_array(
    g.pue, g.pue_source, g.carbon_g_per_kwh, g.carbon_source, g.energy_uj, g.facility_uj,
    g.co2e_ug) ORDER BY g.pue, g.pue_source, g.carbon_g_per_kwh, g.carbon_source)
  FROM (SELECT h.pue, h.pue_source, h.carbon_g_per_kwh, h.carbon_source,
               sum(h.energy_uj) AS energy_uj, sum(h.facility_uj) AS facility_uj,
               sum(h.co2e_ug) AS co2e_ug
        FROM job_energy_hour h WHERE h.cluster = p.cluster AND h.job_id = p.job_id
        GROUP BY h.pue, h.pue_source, h.carbon_g_per_kwh, h.carbon_source) g)""",
    "phases": """(SELECT json_agg(json_build_array(
    f.phase, f.model, f.energy_uj, f.samples, f.metrics, f.tags, timezone('UTC', f.first_at),
    timezone('UTC', f.last_at)) ORDER BY f.first_at, f.phase, f.model)
  FROM job_phase f WHERE f.cluster = p.cluster AND f.job_id = p.job_id)""",
    "steps": """(SELECT json_agg(json_build_array(s.step, s.component, s.energy_uj))
  FROM job_step_energy s WHERE s.cluster = p.cluster AND s.job_id = p.job_id)""",
}

#: The nodes where the job has parts (``job_node``, ``job_energy``), as a set of rows ``node``.
LIVE_NODES_SQL = """SELECT n.node FROM job_node n
    WHERE n.cluster = p.cluster AND n.job_id = p.job_id
  UNION SELECT e.node FROM job_energy e WHERE e.cluster = p.cluster AND e.job_id = p.job_id"""

#: Kept in ``detail`` too: the nodes of :data:`LIVE_NODES_SQL`, which the nodes' high-water
#: marks of a lookup are read for.
NODES = "nodes"

#: A job is materialised once no batch has changed it for this long: a running job gets a
#: batch every push, so it is never materialised while it runs.
SETTLE = timedelta(minutes=15)
#: Each round goes over the jobs changed since the last round's end less this: a job whose
#: last batch committed later than it started (``updated_at``), by up to this, or stamped by a
#: collector whose clock is behind by up to this, is still found. One later than that is
#: passed over: it keeps being read live, which is exact, only slower.
RESCAN = timedelta(hours=1)
#: Jobs per transaction.
CHUNK = 2000
#: One materialising collector at a time (``pg_try_advisory_lock``).
_LOCK_KEY = 0x6A6F6264657461

_DETAIL_OBJECT = "json_build_object({})".format(", ".join(
    [f"'{name}', {sql}" for name, sql in LIVE_SQL.items()]
    + [f"'{NODES}', (SELECT coalesce(json_agg(k.node), '[]') FROM ({LIVE_NODES_SQL}) k)"]
))
#: What the stored details were built by: a detail of another shape is never read.
SHAPE = hashlib.sha256(_DETAIL_OBJECT.encode()).hexdigest()[:16]
#: ``rollup_state`` row: jobs changed before ``through`` have been gone over by code of this
#: shape. No row: never run, so the first run goes over every job.
STATE = f"job_detail {SHAPE}"


def _pick(where: str, order: str, last: str) -> TextClause:
    """The next jobs to materialise: settled, without a detail of their parts' version, from
    the cursor on (``where``) in ``order``; each row with ``last`` (the cursor after it)."""
    return text(f"""
SELECT j.cluster, j.job_id, {last} FROM job j
WHERE j.updated_at <= :settled AND {where}
  AND NOT EXISTS (SELECT 1 FROM job_detail x WHERE x.cluster = j.cluster
                  AND x.job_id = j.job_id AND x.parts_version = j.parts_version
                  AND x.shape = '{SHAPE}')
ORDER BY {order} LIMIT :chunk""")


# Rounds: the jobs changed since the cursor, in the order they changed (ix_job_updated_at).
_BY_TIME = _pick("j.updated_at >= :after", "j.updated_at", "j.updated_at")
# The first run (an upgraded database: every job): in primary-key order, which is about the
# order the part tables' rows lie in, so they are read mostly in sequence.
_BY_KEY = _pick("(j.cluster, j.job_id) > (:after_cluster, :after_job_id)",
                "j.cluster, j.job_id", "NULL")

# The jobs' parts and parts_version, from one snapshot; a detail of an older version (or
# another shape) is replaced, one of a newer (another collector's, from a later snapshot) kept.
_WRITE = text(f"""
INSERT INTO job_detail (cluster, job_id, parts_version, shape, detail)
SELECT p.cluster, p.job_id, p.parts_version, '{SHAPE}', {_DETAIL_OBJECT}
FROM job p
WHERE (p.cluster, p.job_id) IN (
  SELECT * FROM unnest(CAST(:clusters AS text[]), CAST(:job_ids AS text[])))
ON CONFLICT (cluster, job_id) DO UPDATE
  SET parts_version = excluded.parts_version, shape = excluded.shape, detail = excluded.detail
  WHERE job_detail.parts_version < excluded.parts_version
     OR job_detail.shape <> excluded.shape""")


def _cursor(conn: Connection) -> datetime | None:
    through = conn.execute(
        select(RollupState.through).where(RollupState.name == STATE)).scalar_one_or_none()
    if through is None:
        return None
    return through if through.tzinfo else through.replace(tzinfo=UTC)


def _first_line(err: DBAPIError) -> str:
    return (str(err.orig).splitlines() or [repr(err.orig)])[0]


class _ChunkFailed(Exception):
    """No job of a chunk could be written: the database, not a job, is at fault."""


def _write(conn: Connection, keys: list[tuple[str, str]]) -> int:
    """Materialise ``keys``; a job whose detail cannot be built (too large for PostgreSQL,
    say) is logged and left to be read live, without costing the others theirs.

    Raises:
        _ChunkFailed: Not one of several could be written.
    """
    params = {"clusters": [c for c, _ in keys], "job_ids": [j for _, j in keys]}
    try:
        with conn.begin_nested():
            return conn.execute(_WRITE, params).rowcount
    except DBAPIError as err:
        if err.connection_invalidated:
            raise
        first = err
    written, failed = 0, []
    for cluster, job_id in keys:
        try:
            with conn.begin_nested():
                written += conn.execute(
                    _WRITE, {"clusters": [cluster], "job_ids": [job_id]}).rowcount
        except DBAPIError as err:
            if err.connection_invalidated:
                raise
            failed.append((cluster, job_id, err))
    if len(failed) > 1 and not written:
        raise _ChunkFailed(_first_line(first))
    for cluster, job_id, err in failed:
        logger.warning("job %s on %s not materialised (read live): %s", job_id, cluster,
                       _first_line(err))
    return written


def materialise(engine: Engine, now: datetime | None = None, settle: timedelta = SETTLE,
                chunk: int = CHUNK, stop: threading.Event | None = None) -> int | None:
    """Write the detail of every job that settled (unchanged since ``now - settle``) and has
    none of its parts' version, ``chunk`` jobs per transaction; return how many were written
    (0 on SQLite), None when another process is at it. ``stop`` ends it between chunks (the
    next run goes over this one's jobs again).

    One connection, committed after each chunk: the session's advisory lock outlives the
    commits, and nothing stays idle in a transaction during a long first run.
    """
    if engine.dialect.name != "postgresql":
        return 0
    settled = (now or datetime.now(UTC)) - settle
    with engine.connect() as conn:
        locked = conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}).scalar()
        conn.commit()
        if not locked:
            return None
        try:
            return _materialise(conn, settled, chunk, stop)
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
            conn.commit()


def _materialise(conn: Connection, settled: datetime, chunk: int,
                 stop: threading.Event | None) -> int:
    after = _cursor(conn)
    conn.commit()
    params: dict[str, Any] = {"settled": settled, "chunk": chunk}
    if after is None:
        stmt, params["after_cluster"], params["after_job_id"] = _BY_KEY, "", ""
    else:
        stmt, params["after"] = _BY_TIME, after
    written = 0
    while True:
        if stop is not None and stop.is_set():
            return written
        picked = conn.execute(stmt, params).all()
        try:
            done = _write(conn, [(cluster, job_id) for cluster, job_id, _ in picked]
                          ) if picked else 0
        except _ChunkFailed as err:
            # The cursor stays where it was: the next round tries these jobs again.
            conn.rollback()
            logger.warning("job details not materialised, %s written this round: %s",
                           written, err)
            return written
        conn.commit()
        written += done
        if len(picked) < chunk:
            break
        if stmt is _BY_KEY:
            params["after_cluster"], params["after_job_id"] = picked[-1][:2]
        elif picked[-1][2] == params["after"] and not done:
            break  # a whole chunk at one instant, none of it written: left to be read live
        else:
            # Jobs changed at the chunk's last instant stay in range (>=); those written now
            # have their detail, so they are not picked again.
            params["after"] = picked[-1][2]
    stamp, through = datetime.now(UTC), settled - RESCAN
    conn.execute(
        dialect_insert(conn)(RollupState)
        .values(name=STATE, through=through, refreshed_at=stamp)
        .on_conflict_do_update(index_elements=[RollupState.name],
                               set_={"through": through, "refreshed_at": stamp}))
    conn.commit()
    if written:
        logger.info("job details materialised: %s jobs settled before %s", written,
                    f"{settled:%Y-%m-%d %H:%M:%S}")
    return written


def materialiser(engine: Engine, interval_s: float) -> Periodic:
    """:func:`materialise` in the background, right away then every ``interval_s``: in a
    thread of its own, so that a first run over millions of jobs holds up no leaderboard
    refresh. Jobs not materialised are read live: slower, as exact."""
    return Periodic("jobenergy-job-details", interval_s,
                    lambda stop: materialise(engine, stop=stop), "job details not materialised")
