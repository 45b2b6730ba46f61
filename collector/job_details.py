"""A settled job's parts, kept in its own row (``job.detail``, PostgreSQL), so that reading an
old job touches one row instead of seven tables.

A job's JSON (``GET /api/v1/jobs/{id}``, a page of jobs) is built from its per-source totals,
the nodes that saw it, its factor groups, phases and steps: rows of ``job_energy``,
``job_node``, ``job_energy_hour``, ``job_phase`` and ``job_step_energy``
(:data:`LIVE_SQL`). Read live, that is an index probe and a heap page in each table; with 10 M
jobs those tables are far larger than memory, so a lookup of an old job read 50-80 KiB from
disk. A job that no batch has changed for :data:`SETTLE` gets the same parts, as the same
JSON, written into ``job.detail`` (:func:`materialise`); a lookup then reads that and nothing
else of the job.

Exact, never stale, without trusting the schedule:

- Every transaction that changes a job's parts also updates its row and sets ``detail`` to
  NULL there: an ingested batch upserts the row of every job it carries
  (``collector/ingest.py``), and a factor recompute updates the rows of the jobs whose hours
  it changed (``collector/hours.py``). Readers take ``detail`` when it is not NULL, else read
  the parts live (``api/job_lookup.py``). A new writer of those tables must do the same.
- :func:`materialise` computes a job's parts and writes them in one statement, and only
  where the row is still the version it read (``xmin``). A batch that changes the job while
  it runs either holds the row, so the update waits for it, finds a newer version and leaves
  the job to the next round, or updates the row after it, setting ``detail`` back to NULL.

The live path stays the answer for jobs changed recently (their pages are in memory: the batch
that changed them just wrote them) and on SQLite, where nothing is materialised.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, TextClause, select, text

from jobenergy.collector.models import RollupState
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
#: Jobs per transaction.
CHUNK = 2000
#: ``rollup_state`` row: settled jobs changed before ``through`` have been materialised (a
#: job whose batch committed later than it started, by more than :data:`SETTLE`, can be
#: passed over: it keeps being read live, which is exact, only slower). No row: never run,
#: so the first run goes over every job.
STATE = "job_detail"

_DETAIL_OBJECT = "json_build_object({})".format(", ".join(
    [f"'{name}', {sql}" for name, sql in LIVE_SQL.items()]
    + [f"'{NODES}', (SELECT json_agg(k.node) FROM ({LIVE_NODES_SQL}) k)"]
))

def _chunk(pick: str, last: str) -> TextClause:
    """One chunk: the settled jobs without a detail that ``pick`` selects (``c``), then their
    details written where the row is the version that was read (see the module's docstring);
    answers how many were picked, ``last`` of them (where the next chunk starts), and how many
    were written."""
    return text(f"""
WITH c AS MATERIALIZED (
  SELECT cluster, job_id, updated_at, xmin AS seen_xmin FROM job
  WHERE detail IS NULL AND updated_at <= :settled AND {pick} LIMIT :chunk),
u AS (
  UPDATE job AS p SET detail = {_DETAIL_OBJECT}
  FROM c WHERE p.cluster = c.cluster AND p.job_id = c.job_id AND p.xmin = c.seen_xmin
  RETURNING 1)
SELECT (SELECT count(*) FROM c), {last}, (SELECT count(*) FROM u)
""")


# Rounds: the jobs changed since the last round's cursor, in the order they changed. Rows
# changed at the same instant as a chunk's last stay in range (>=): those written are no
# longer NULL, and those passed over were changed since.
_BY_TIME = _chunk("updated_at >= :after ORDER BY updated_at",
                  "(SELECT max(updated_at) FROM c)")
# The first run (an upgraded database: every job): in primary-key order, which is about the
# order the part tables' rows lie in, so they are read mostly in sequence (about 3 times the
# jobs per second of the time order on a database larger than memory, measured at 10 M jobs).
_BY_KEY = _chunk("(cluster, job_id) > (:after_cluster, :after_job_id) ORDER BY cluster, job_id",
                 "(SELECT json_build_array(cluster, job_id) FROM c "
                 "ORDER BY cluster DESC, job_id DESC LIMIT 1)")


def _cursor(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        through = conn.execute(
            select(RollupState.through).where(RollupState.name == STATE)).scalar_one_or_none()
    if through is None:
        return None
    return through if through.tzinfo else through.replace(tzinfo=UTC)


def materialise(engine: Engine, now: datetime | None = None, settle: timedelta = SETTLE,
                chunk: int = CHUNK, stop: threading.Event | None = None) -> int:
    """Write the detail of every job that settled (unchanged since ``now - settle``) and has
    none, ``chunk`` jobs per transaction; return how many were written (0 on SQLite).

    Safe to run in several collectors at once: each chunk writes only rows still as read.
    ``stop`` ends it between chunks; the next run then goes over this one's jobs again.
    """
    if engine.dialect.name != "postgresql":
        return 0
    settled = (now or datetime.now(UTC)) - settle
    after = _cursor(engine)
    params: dict[str, Any] = {"settled": settled, "chunk": chunk}
    if after is None:
        stmt, params["after_cluster"], params["after_job_id"] = _BY_KEY, "", ""
    else:
        stmt, params["after"] = _BY_TIME, after
    written = 0
    while True:
        if stop is not None and stop.is_set():
            return written
        with engine.begin() as conn:
            picked, last, done = conn.execute(stmt, params).one()
        written += done
        if picked < chunk:
            break
        if stmt is _BY_KEY:
            params["after_cluster"], params["after_job_id"] = last
        elif done or last != params["after"]:
            params["after"] = last
        else:
            break  # a whole chunk at one instant, changed meanwhile: the next round
    # The next round starts a SETTLE before this one's end: batches that took long to commit.
    through = settled - settle
    with engine.begin() as conn:
        stamp = datetime.now(UTC)
        conn.execute(
            dialect_insert(conn)(RollupState)
            .values(name=STATE, through=through, refreshed_at=stamp)
            .on_conflict_do_update(index_elements=[RollupState.name],
                                   set_={"through": through, "refreshed_at": stamp}))
    if written:
        logger.info("job details materialised: %s jobs settled before %s", written,
                    f"{settled:%Y-%m-%d %H:%M:%S}")
    return written
