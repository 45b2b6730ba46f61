"""Ingest throughput and storage on PostgreSQL, over stored history of 0, 1 h, 24 h and 30 days.

Starts a throwaway PostgreSQL (tests/pgserver.py) and the server (``create_app``, auth "none",
under uvicorn with 1 and with 2 workers) on 127.0.0.1, then for each history size:

1. loads history, fast, by SQL (``generate_series``) straight into ``energy_interval`` and
   ``ingested_batch``, with the totals ingest would have kept (``job``, ``job_energy``,
   ``job_energy_hour``, ``node_energy``, ``job_node``, ``node_progress``) computed in Python;
   history is stored as the coalesced agent stores it (one 10-s interval per push);
2. has 16 agents (threads, one HTTP connection each) post their own node's batches, in order,
   for a few seconds, in two shapes: 1-Hz storage (10 intervals of 1 s per push) and 10-s
   coalesced storage (``store_interval_s``: 1 interval of 10 s per push); each node has 2 CPU
   packages, 2 DRAM zones and 8 GPUs (12 sources) and 1 to 4 jobs (by node) plus the
   unattributed share;
3. prints records/s, batches/s and the batch latency (p50, p99).

Then the raw COPY ceiling for the same rows, ingest_batch in-process (alone, and in groups of 8
as the server's group commit stores them), and the bytes per
node-day (``energy_interval`` with its indexes, and the other tables) for both storage shapes,
projected to 10 000 nodes for a year. Prints figures; asserts nothing.

    .venv/bin/python bench/ingest_bench.py     # about 7-8 minutes on 2 cores

Bigger (every node 30 days, longer runs, more agents):

    .venv/bin/python bench/ingest_bench.py --full-history-nodes 64 --load-budget-s 7200
        --run-s 20 --agents 64

History is loaded node by node within --load-budget-s per history size; what fitted is
printed ("stored: ..."), so the deepest stage may hold 30 days for only some nodes.

The make_batch_dict/records_of pair (one 23 760-record batch) is kept for bench/auth_bench.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import Engine, func, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.ingest import ingest_batch, ingest_group, prepare
from jobenergy.collector.intervals import write_intervals_pg
from jobenergy.collector.models import (
    Base,
    Job,
    JobEnergy,
    JobEnergyHour,
    JobNode,
    NodeEnergy,
    NodeProgress,
)
from jobenergy.collector.partitions import add_months, create_month_partition
from jobenergy.collector.plan import plan_batch
from jobenergy.core.carbon import WORLD_AVERAGE_G_PER_KWH, co2e_ug, facility_uj
from jobenergy.core.schema import Batch
from jobenergy.core.split import split_uj

T0 = datetime(2026, 11, 23, tzinfo=UTC)
BENCH_DIR = Path(__file__).resolve().parent
CLUSTER = "bench"
DB_URL_ENV = "JOBENERGY_BENCH_DB_URL"

#: One node: 2 CPU packages, 2 DRAM zones, 8 GPUs.
SOURCES: list[tuple[str, str]] = (
    [("cpu", f"package-{p}") for p in range(2)]
    + [("dram", f"package-{p}/dram") for p in range(2)]
    + [("gpu", f"gpu/GPU-{g:08x}-0000-0000-0000-000000000000") for g in range(8)]
)
POWER_W = {"cpu": 180, "dram": 25, "gpu": 450}
GPU_NAME = "NVIDIA H100 80GB HBM3"
JOB_WEIGHT, UNATTRIBUTED_WEIGHT = 3, 1
#: A job slot's job changes every 6 h (slot j shifted by j hours: job changes fall on hours).
JOB_BLOCK_S = 6 * 3600
PUSH_S = 10  # an agent pushes every 10 s in both shapes
HOUR = timedelta(hours=1)
VARIANTS = {"1hz": (10, 1.0), "10s": (1, 10.0)}  # name: (intervals per push, interval s)
#: What the totals tables of the collector are (every table but the intervals).
OTHER_TABLES = [t.name for t in Base.metadata.sorted_tables if t.name != "energy_interval"]


# --------------------------------------------------------------------------------------------
# The 23 760-record batch of the earlier benchmark (bench/auth_bench.py uses it).


def make_batch_dict(node: str, seq: int, n_intervals: int = 60, n_jobs: int = 32) -> dict:
    """Build one large batch as a plain dict (conserving energy by largest remainder)."""
    weights = {f"{100000 + seq % 7 * 100 + j}": 1 + j % 5 for j in range(n_jobs)}
    weights[""] = 3  # the node's unattributed share
    intervals = []
    for i in range(n_intervals):
        start = T0 + timedelta(seconds=(seq * n_intervals + i) * 10)
        srcs = []
        for s, (component, source) in enumerate(SOURCES):
            measured = 2_500_000_000 + 1_000 * i + 7 * s
            parts = split_uj(measured, weights)
            unattributed = parts.pop("")
            srcs.append({
                "component": component, "source": source, "measured_uj": measured,
                "jobs_uj": parts, "unattributed_uj": unattributed,
                "device_name": GPU_NAME if component == "gpu" else None,
            })
        intervals.append({
            "start": start.isoformat(), "end": (start + timedelta(seconds=10)).isoformat(),
            "sources": srcs, "jobs": [{"job_id": j, "uid": 1000} for j in weights if j],
        })
    return {"schema_version": 1, "cluster": "bench", "node": node, "boot_id": "boot",
            "seq": seq, "intervals": intervals}


def records_of(batch: dict) -> int:
    return sum(
        len(s["jobs_uj"]) + (1 if s["unattributed_uj"] or not s["jobs_uj"] else 0)
        for iv in batch["intervals"]
        for s in iv["sources"]
    )


# --------------------------------------------------------------------------------------------
# The simulated cluster: node i runs 1 + i % 4 jobs at a time; job ids follow from the time,
# the same for history (SQL) and live batches (Python).


def node_name(index: int) -> str:
    return f"node{index:03d}"


#: Jobs on every node (``--jobs-per-node``); None: 1 to 4 by node (1 + index % 4).
JOBS_PER_NODE: int | None = None


def jobs_on(index: int) -> int:
    return JOBS_PER_NODE or 1 + index % 4


def job_id(index: int, slot: int, epoch_s: int) -> str:
    return str((index * 100 + slot) * 100_000 + (epoch_s + slot * 3600) // JOB_BLOCK_S)


_JOB_ID_SQL = (
    "((:ni * 100 + v.slot) * 100000 + "
    f"floor((extract(epoch FROM t) + v.slot * 3600) / {JOB_BLOCK_S}))::bigint::text"
)


def measured_uj(index: int, s: int, seconds: float, wobble: int = 0) -> int:
    component = SOURCES[s][0]
    return int(POWER_W[component] * seconds * 1_000_000) + index * 1_000 + s * 7 + wobble


def live_batch(index: int, seq: int, start: datetime, n_intervals: int, interval_s: float,
               boot_id: str = "live") -> dict:
    """One push of node ``index``: valid, conserving (largest-remainder split)."""
    intervals = []
    for n in range(n_intervals):
        begin = start + timedelta(seconds=n * interval_s)
        epoch = int(begin.timestamp())
        jobs = [job_id(index, slot, epoch) for slot in range(1, jobs_on(index) + 1)]
        weights: dict[str | None, int] = {j: JOB_WEIGHT for j in jobs}
        weights[None] = UNATTRIBUTED_WEIGHT
        srcs = []
        for s, (component, source) in enumerate(SOURCES):
            measured = measured_uj(index, s, interval_s, (seq * 7919 + n * 104729) % 1_000_000)
            parts = split_uj(measured, weights)
            unattributed = parts.pop(None)
            srcs.append({
                "component": component, "source": source, "measured_uj": measured,
                "jobs_uj": parts, "unattributed_uj": unattributed,
                "device_name": GPU_NAME if component == "gpu" else None,
            })
        intervals.append({
            "start": begin.isoformat(),
            "end": (begin + timedelta(seconds=interval_s)).isoformat(),
            "sources": srcs, "jobs": [{"job_id": j, "uid": 1000} for j in jobs],
        })
    return {"schema_version": 1, "cluster": CLUSTER, "node": node_name(index),
            "boot_id": boot_id, "seq": seq, "agent_version": "bench", "intervals": intervals}


@dataclass
class Agent:
    """One node's agent: where its next push starts, and its next sequence number."""

    index: int
    next_start: datetime
    next_seq: int = 0

    def prepare(self, variant: str, count: int) -> list[tuple[bytes, int, int]]:
        """``count`` gzip'd pushes from the cursor on, with their record counts: as sent,
        and as sampled (the 1-Hz records a coalesced interval stands for)."""
        n_intervals, interval_s = VARIANTS[variant]
        out = []
        for k in range(count):
            body = live_batch(self.index, self.next_seq + k,
                              self.next_start + timedelta(seconds=k * PUSH_S),
                              n_intervals, interval_s)
            records = records_of(body)
            out.append((gzip.compress(json.dumps(body).encode(), compresslevel=6),
                        records, int(records * interval_s)))
        return out

    def advance(self, sent: int) -> None:
        """Move the cursor past ``sent`` pushes (the rest of a prepared list is dropped)."""
        self.next_start += timedelta(seconds=sent * PUSH_S)
        self.next_seq += sent


# --------------------------------------------------------------------------------------------
# The server.


def server_app() -> Any:
    """uvicorn factory (``--factory``): the collector on $JOBENERGY_BENCH_DB_URL, no auth, no
    rate limit."""
    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings

    return create_app(ServerSettings(
        db_url=os.environ[DB_URL_ENV], migrate=False, auth="none", pue=1.0,
        carbon_intensity_g_per_kwh=None, rate_limit_per_s=0,
    ))


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def start_server(db_url: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = load_pgserver().free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "ingest_bench:server_app", "--factory",
         "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
        env={**os.environ, DB_URL_ENV: db_url},
    )
    return proc, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------
# Sizes.


def ei_bytes(engine: Engine) -> int:
    """energy_interval with its indexes (and TOAST), all partitions."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
            "FROM pg_partition_tree('energy_interval')")).scalar_one())


def other_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            text("SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) "
                 "FROM unnest(CAST(:tables AS text[])) t"),
            {"tables": OTHER_TABLES},
        ).scalar_one())


def table_bytes(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_total_relation_size(to_regclass(:t))"),
                                {"t": table}).scalar_one())


def db_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return f"{n:.1f}"


# --------------------------------------------------------------------------------------------
# History, generated by SQL.

_EI_SQL = f"""
INSERT INTO energy_interval
    (cluster, node, job_id, component, source, start_at, end_at, energy_uj, estimated)
SELECT :cluster, :node, CASE WHEN v.slot = 0 THEN NULL ELSE {_JOB_ID_SQL} END,
       v.component, v.source, t, t + interval '10 seconds', v.energy, false
FROM generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) - interval '10 seconds',
                     interval '10 seconds') AS t
CROSS JOIN LATERAL (VALUES {{values}}) AS v(component, source, slot, energy)
"""

_BATCH_SQL = """
INSERT INTO ingested_batch
    (cluster, node, boot_id, seq, received_at, agent_version, intervals, records, content_sha256)
SELECT :cluster, CAST(:node AS text), CAST(:boot AS text), g,
       CAST(:lo AS timestamptz) + (g + 1) * interval '10 seconds' + interval '1 second',
       'bench-history', 1, :records,
       encode(sha256(convert_to(CAST(:node AS text) || CAST(:boot AS text) || g::text, 'UTF8')),
              'hex')
FROM generate_series(0, :n - 1) AS g
"""


def shares(index: int) -> list[tuple[int, int, int]]:
    """Per source and slot (0: unattributed) the µJ of one 10-s history interval:
    ``(source index, slot, µJ)``."""
    k = jobs_on(index)
    out = []
    for s in range(len(SOURCES)):
        measured = measured_uj(index, s, PUSH_S)
        job_uj = measured * JOB_WEIGHT // (JOB_WEIGHT * k + UNATTRIBUTED_WEIGHT)
        out.append((s, 0, measured - k * job_uj))
        out.extend((s, slot, job_uj) for slot in range(1, k + 1))
    return out


def _values_sql(index: int) -> str:
    return ", ".join(
        f"('{SOURCES[s][0]}', '{SOURCES[s][1]}', {slot}, {uj})" for s, slot, uj in shares(index)
    )


def _load_chunk(engine: Engine, index: int, lo: datetime, hi: datetime) -> int:
    n = int((hi - lo).total_seconds()) // PUSH_S
    with engine.begin() as conn:
        rows = conn.execute(
            text(_EI_SQL.format(values=_values_sql(index))),
            {"cluster": CLUSTER, "node": node_name(index), "ni": index, "lo": lo, "hi": hi},
        ).rowcount
        conn.execute(text(_BATCH_SQL), {
            "cluster": CLUSTER, "node": node_name(index), "boot": f"hist-{lo:%Y%m%dT%H%M}",
            "lo": lo, "n": n, "records": len(SOURCES) * (jobs_on(index) + 1),
        })
    return rows


def _totals(spans: dict[int, tuple[datetime, datetime]]) -> dict[str, list[dict]]:
    """The totals ingest would have added for these nodes' history (whole hours)."""
    carbon = WORLD_AVERAGE_G_PER_KWH
    per_hour = 3600 // PUSH_S
    job_energy: dict[tuple, dict] = {}
    node_energy: dict[tuple, dict] = {}
    hours: dict[tuple, int] = defaultdict(int)
    jobs: dict[str, dict] = {}
    job_nodes: dict[tuple, dict] = {}
    progress = []
    for index, (lo, hi) in spans.items():
        node = node_name(index)
        table = shares(index)
        progress.append({"cluster": CLUSTER, "node": node, "first_at": lo, "last_at": hi,
                         "intervals": int((hi - lo).total_seconds()) // PUSH_S,
                         "last_sources": len(SOURCES)})
        for s, (component, source) in enumerate(SOURCES):
            measured = measured_uj(index, s, PUSH_S)
            unattributed = next(uj for s2, slot, uj in table if s2 == s and slot == 0)
            count = progress[-1]["intervals"]
            node_energy[(node, component, source)] = {
                "cluster": CLUSTER, "node": node, "component": component, "source": source,
                "measured_uj": measured * count, "unattributed_uj": unattributed * count,
                "intervals": count, "first_at": lo, "last_at": hi}
        hour = lo
        while hour < hi:
            epoch = int(hour.timestamp())
            end = hour + HOUR
            for s, slot, uj in table:
                if slot == 0:
                    continue
                component, source = SOURCES[s]
                job = job_id(index, slot, epoch)
                key = (job, node, component, source)
                row = job_energy.get(key)
                if row is None:
                    row = job_energy[key] = {
                        "cluster": CLUSTER, "job_id": job, "node": node,
                        "component": component, "source": source, "energy_uj": 0,
                        "estimated_uj": 0, "intervals": 0, "covered_s": 0.0, "first_at": hour,
                        "last_at": end, "wraps": 0, "resets": 0,
                        "device_name": GPU_NAME if component == "gpu" else None}
                row["energy_uj"] += uj * per_hour
                row["intervals"] += per_hour
                row["covered_s"] += 3600.0
                row["first_at"], row["last_at"] = min(row["first_at"], hour), max(
                    row["last_at"], end)
                hours[(job, hour)] += uj * per_hour
                summary = jobs.get(job)
                if summary is None:
                    block = (epoch + slot * 3600) // JOB_BLOCK_S * JOB_BLOCK_S - slot * 3600
                    start = datetime.fromtimestamp(block, UTC)
                    summary = jobs[job] = {
                        "cluster": CLUSTER, "job_id": job, "user": f"user{int(job) % 37}",
                        "uid": 1000, "account": f"acct{int(job) % 5}", "partition": "gpu",
                        "name": f"train-{job}", "nodes": [node], "state": "COMPLETED",
                        "start_at": start, "end_at": start + timedelta(seconds=JOB_BLOCK_S),
                        "updated_at": datetime.now(UTC), "begin_at": hour, "energy_uj": 0,
                        "gpu_uj": 0, "gpu_s": 0.0, "facility_uj": 0, "co2e_ug": 0,
                        "annotated": False}
                summary["begin_at"] = min(summary["begin_at"], hour)
                summary["energy_uj"] += uj * per_hour
                if component == "gpu":
                    summary["gpu_uj"] += uj * per_hour
                    summary["gpu_s"] += 3600.0
                presence = job_nodes.setdefault((job, node), {
                    "cluster": CLUSTER, "job_id": job, "node": node, "first_at": hour,
                    "last_at": end, "intervals": 0})
                if s == 0:
                    presence["intervals"] += per_hour
                presence["first_at"] = min(presence["first_at"], hour)
                presence["last_at"] = max(presence["last_at"], end)
            hour = end
    hour_rows = []
    for (job, hour), uj in hours.items():
        facility = facility_uj(uj, 1.0)
        co2e = co2e_ug(facility, carbon)
        hour_rows.append({"cluster": CLUSTER, "job_id": job, "hour_at": hour, "energy_uj": uj,
                          "facility_uj": facility, "co2e_ug": co2e, "pue": 1.0,
                          "carbon_g_per_kwh": carbon, "pue_source": "default",
                          "carbon_source": "fallback"})
        jobs[job]["facility_uj"] += facility
        jobs[job]["co2e_ug"] += co2e
    return {"job": list(jobs.values()), "job_energy": list(job_energy.values()),
            "job_energy_hour": hour_rows, "node_energy": list(node_energy.values()),
            "job_node": list(job_nodes.values()), "node_progress": progress}


def _upsert_totals(engine: Engine, totals: dict[str, list[dict]]) -> None:
    least, greatest = func.least, func.greatest
    with engine.begin() as conn:
        stmt = pg_insert(Job)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[Job.cluster, Job.job_id],
            set_={Job.energy_uj: Job.energy_uj + new.energy_uj,
                  Job.gpu_uj: Job.gpu_uj + new.gpu_uj, Job.gpu_s: Job.gpu_s + new.gpu_s,
                  Job.facility_uj: Job.facility_uj + new.facility_uj,
                  Job.co2e_ug: Job.co2e_ug + new.co2e_ug,
                  Job.begin_at: least(Job.begin_at, new.begin_at),
                  Job.start_at: least(Job.start_at, new.start_at),
                  Job.user: func.coalesce(Job.user, new.user),
                  Job.account: func.coalesce(Job.account, new.account),
                  Job.name: func.coalesce(Job.name, new.name),
                  Job.state: func.coalesce(Job.state, new.state)}),
            totals["job"])
        stmt = pg_insert(JobEnergy)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[JobEnergy.cluster, JobEnergy.job_id, JobEnergy.node,
                            JobEnergy.component, JobEnergy.source],
            set_={JobEnergy.energy_uj: JobEnergy.energy_uj + new.energy_uj,
                  JobEnergy.intervals: JobEnergy.intervals + new.intervals,
                  JobEnergy.covered_s: JobEnergy.covered_s + new.covered_s,
                  JobEnergy.first_at: least(JobEnergy.first_at, new.first_at),
                  JobEnergy.last_at: greatest(JobEnergy.last_at, new.last_at)}),
            totals["job_energy"])
        stmt = pg_insert(JobEnergyHour)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[JobEnergyHour.cluster, JobEnergyHour.job_id, JobEnergyHour.hour_at],
            set_={JobEnergyHour.energy_uj: JobEnergyHour.energy_uj + new.energy_uj,
                  JobEnergyHour.facility_uj: JobEnergyHour.facility_uj + new.facility_uj,
                  JobEnergyHour.co2e_ug: JobEnergyHour.co2e_ug + new.co2e_ug}),
            totals["job_energy_hour"])
        stmt = pg_insert(NodeEnergy)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[NodeEnergy.cluster, NodeEnergy.node, NodeEnergy.component,
                            NodeEnergy.source],
            set_={NodeEnergy.measured_uj: NodeEnergy.measured_uj + new.measured_uj,
                  NodeEnergy.unattributed_uj: NodeEnergy.unattributed_uj + new.unattributed_uj,
                  NodeEnergy.intervals: NodeEnergy.intervals + new.intervals,
                  NodeEnergy.first_at: least(NodeEnergy.first_at, new.first_at),
                  NodeEnergy.last_at: greatest(NodeEnergy.last_at, new.last_at)}),
            totals["node_energy"])
        stmt = pg_insert(JobNode)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[JobNode.cluster, JobNode.job_id, JobNode.node],
            set_={JobNode.intervals: JobNode.intervals + new.intervals,
                  JobNode.first_at: least(JobNode.first_at, new.first_at),
                  JobNode.last_at: greatest(JobNode.last_at, new.last_at)}),
            totals["job_node"])
        stmt = pg_insert(NodeProgress)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[NodeProgress.cluster, NodeProgress.node],
            set_={NodeProgress.intervals: NodeProgress.intervals + new.intervals,
                  NodeProgress.first_at: least(NodeProgress.first_at, new.first_at),
                  NodeProgress.last_at: greatest(NodeProgress.last_at, new.last_at)}),
            totals["node_progress"])


@dataclass
class Loaded:
    spans: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)
    rows: int = 0
    node_seconds: int = 0
    insert_s: float = 0.0
    totals_s: float = 0.0
    vacuum_s: float = 0.0
    ei_delta: int = 0
    cut_short: bool = False


def load_history(engine: Engine, url: str, spans: dict[int, tuple[datetime, datetime]],
                 jobs: int, budget_s: float) -> Loaded:
    """Store each node's ``[lo, hi)`` (whole hours) as coalesced 10-s history.

    Node by node, a day at a time from ``hi`` back; once ``budget_s`` is spent no further day
    is started, so each node gets a contiguous part ending at ``hi`` (``Loaded.spans``).
    """
    loaded = Loaded()
    before = ei_bytes(engine)
    chunks = []
    for index, (lo, hi) in spans.items():
        end = hi
        while end > lo:
            start = max(lo, end - timedelta(days=1))
            chunks.append((index, start, end))
            end = start
    begin = time.perf_counter()
    deadline = begin + budget_s

    def chunk(args: tuple[int, datetime, datetime]) -> tuple[int, datetime, datetime, int]:
        if time.perf_counter() > deadline:
            return args[0], args[2], args[2], -1
        return *args, _load_chunk(engine, *args)

    # ThreadPoolExecutor starts tasks in order: what was loaded is a prefix of the chunks
    with ThreadPoolExecutor(jobs) as pool:
        for index, start, end, rows in pool.map(chunk, chunks):
            if rows < 0:
                loaded.cut_short = True
                continue
            loaded.rows += rows
            loaded.node_seconds += int((end - start).total_seconds())
            lo, hi = loaded.spans.get(index, (start, end))
            loaded.spans[index] = (min(lo, start), max(hi, end))
    loaded.insert_s = time.perf_counter() - begin
    begin = time.perf_counter()
    if loaded.spans:
        _upsert_totals(engine, _totals(loaded.spans))
    loaded.totals_s = time.perf_counter() - begin
    begin = time.perf_counter()
    vacuum(url)
    loaded.vacuum_s = time.perf_counter() - begin
    loaded.ei_delta = ei_bytes(engine) - before
    return loaded


def vacuum(url: str) -> None:
    """VACUUM ANALYZE what history loading wrote, so autovacuum does not run mid-measurement."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("VACUUM (ANALYZE) energy_interval, ingested_batch, job, "
                              "job_energy, job_energy_hour, job_node"))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Measuring.


@dataclass
class Run:
    stage: str
    variant: str
    workers: int
    batches: int = 0
    records: int = 0
    sampled: int = 0  # the 1-Hz records the pushes stand for (10s: 10 per record sent)
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ei_delta: int = 0
    other_delta: int = 0
    ei_rows_before: int = 0
    load: float = 0.0  # 1-minute load average of the host after the run

    @property
    def node_seconds(self) -> int:
        return self.batches * PUSH_S

    def line(self) -> str:
        lat = sorted(self.latencies) or [math.nan]
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        errors = f"; {len(self.errors)} ERRORS, first: {self.errors[0]}" if self.errors else ""
        return (
            f"  {self.variant:>4} {self.workers} worker{'s' if self.workers > 1 else ' '}: "
            f"{self.batches:5d} batches {self.records:8,d} records in {self.wall_s:5.1f} s = "
            f"{self.records / self.wall_s:9,.0f} records/s ({self.sampled / self.wall_s:9,.0f} "
            f"sampled at 1 Hz) {self.batches / self.wall_s:6.1f} batches/s; latency p50 "
            f"{p50:5.0f} ms p99 {p99:5.0f} ms; load {self.load:.1f}"
            f"{errors}"
        )


def run_http(url: str, agents: list[Agent], variant: str, per_agent: int, run_s: float,
             run: Run) -> None:
    """Each agent posts its node's pushes in order until ``run_s`` is over."""
    prepared = {a.index: a.prepare(variant, per_agent) for a in agents}
    barrier = threading.Barrier(len(agents) + 1)
    sent: dict[int, int] = {}
    ends: dict[int, float] = {}
    lock = threading.Lock()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    def agent_loop(agent: Agent) -> None:
        count = records = sampled = 0
        latencies = []
        error = None
        with httpx.Client(base_url=url, timeout=120.0) as client:
            client.get("/healthz")  # connect before the clock starts
            barrier.wait()
            deadline = time.perf_counter() + run_s
            for body, n, n_sampled in prepared[agent.index]:
                if time.perf_counter() >= deadline:
                    break
                begin = time.perf_counter()
                try:
                    response = client.post("/api/v1/batches", content=body, headers=headers)
                except httpx.HTTPError as err:
                    error = f"{agent.index}: {err!r}"
                    break
                if response.status_code != 200 or response.json().get("duplicate"):
                    error = f"{node_name(agent.index)}: {response.status_code} {response.text}"
                    break
                latencies.append(time.perf_counter() - begin)
                count += 1
                records += n
                sampled += n_sampled
        with lock:
            sent[agent.index] = count
            ends[agent.index] = time.perf_counter()
            run.batches += count
            run.records += records
            run.sampled += sampled
            run.latencies.extend(latencies)
            if error:
                run.errors.append(error)

    threads = [threading.Thread(target=agent_loop, args=(a,)) for a in agents]
    for thread in threads:
        thread.start()
    barrier.wait()
    begin = time.perf_counter()
    for thread in threads:
        thread.join()
    run.wall_s = max(ends.values()) - begin
    run.load = os.getloadavg()[0]
    for agent in agents:
        agent.advance(sent[agent.index] if not run.errors else per_agent)


def pg_tune(server: Any, url: str, shared_buffers: str) -> None:
    """Settings of a server sized for this (durability stays off: the data is disposable)."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for name, value in (("shared_buffers", shared_buffers), ("max_wal_size", "4GB"),
                                ("checkpoint_timeout", "30min"),
                                ("maintenance_work_mem", "256MB")):
                conn.execute(text(f"ALTER SYSTEM SET {name} = '{value}'"))
    finally:
        engine.dispose()
    # pg_ctl restart keeps the command line options of the first start (postmaster.opts)
    server._run(str(server.bindir / "pg_ctl"), "-D", str(server.data_dir), "-l",
                str(server.root / "server.log"), "-w", "-t", "60", "-m", "fast", "restart")


def copy_ceiling(engine: Engine, agents: list[Agent], per_agent: int) -> list[str]:
    """Raw COPY of 1-Hz rows (rolled back): one stream, two streams, one COPY per batch."""
    batches = []
    for agent in agents:
        for k in range(per_agent):
            body = live_batch(agent.index, agent.next_seq + k,
                              agent.next_start + timedelta(seconds=k * PUSH_S), 10, 1.0)
            batches.append(Batch.model_validate(body))
    plans = [plan_batch(b) for b in batches]
    records = sum(len(p.rows) for p in plans)
    lines = []
    null = "\\N"
    for batch, plan in zip(batches, plans, strict=True):
        times = [f"{iv.start.isoformat()}\t{iv.end.isoformat()}" for iv in batch.intervals]
        lines.append("".join(
            f"{CLUSTER}\t{batch.node}\t{null if j is None else j}\t{c}\t{s}\t{times[i]}\t"
            f"{uj}\t{'t' if est else 'f'}\n" for j, c, s, i, uj, est in plan.rows))
    copy_sql = ("COPY energy_interval (cluster, node, job_id, component, source, start_at, "
                "end_at, energy_uj, estimated) FROM STDIN")

    def stream(part: list[str]) -> None:
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for chunk in part:
                    copy.write(chunk.encode())
            raw.rollback()
        finally:
            raw.close()

    out = []
    begin = time.perf_counter()
    stream(lines)
    wall = time.perf_counter() - begin
    out.append(f"  COPY, one stream, 1 connection: {records:,} rows in {wall:.2f} s = "
               f"{records / wall:,.0f} rows/s")
    begin = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(stream, [lines[0::2], lines[1::2]]))
    wall = time.perf_counter() - begin
    out.append(f"  COPY, two streams, 2 connections: {records:,} rows in {wall:.2f} s = "
               f"{records / wall:,.0f} rows/s")
    begin = time.perf_counter()
    with engine.connect() as conn:
        for batch, plan in zip(batches, plans, strict=True):
            with conn.begin() as trans:
                write_intervals_pg(conn, [(batch, plan)])
                trans.rollback()
    wall = time.perf_counter() - begin
    out.append(f"  COPY per batch (write_intervals_pg, 1 transaction each, 1 connection): "
               f"{len(batches)} batches {records:,} rows in {wall:.2f} s = "
               f"{records / wall:,.0f} rows/s, {len(batches) / wall:,.0f} batches/s")
    return out


def ingest_in_process(engine: Engine, agents: list[Agent], per_agent: int, variant: str,
                      group: int = 1) -> str:
    """ingest_batch without HTTP, 1 connection, validated batches (committed); with
    ``group`` > 1, ``group`` agents' pushes per transaction (ingest_group, as the server's
    group commit stores them)."""
    n_intervals, interval_s = VARIANTS[variant]
    rounds = []
    for k in range(per_agent):
        rounds.append([Batch.model_validate(live_batch(
            agent.index, agent.next_seq + k, agent.next_start + timedelta(seconds=k * PUSH_S),
            n_intervals, interval_s)) for agent in agents])
    for agent in agents:
        agent.advance(per_agent)
    batches = [batch for one_round in rounds for batch in one_round]
    records = 0
    begin = time.perf_counter()
    if group == 1:
        for batch in batches:
            with Session(engine) as session, session.begin():
                records += ingest_batch(session, batch).records
    else:  # a round holds one push per node: groups of distinct nodes
        for one_round in rounds:
            for i in range(0, len(one_round), group):
                with engine.begin() as conn:
                    outcomes = ingest_group(conn, [prepare(b) for b in one_round[i:i + group]])
                records += sum(o.records for o in outcomes)  # type: ignore[union-attr]
    wall = time.perf_counter() - begin
    how = "ingest_batch" if group == 1 else f"ingest_group of {group}"
    return (f"  {how} in-process (no HTTP, no JSON), 1 connection, {variant} pushes: "
            f"{len(batches)} batches {records:,} records in {wall:.2f} s = "
            f"{records / wall:,.0f} records/s, {len(batches) / wall:.1f} batches/s "
            f"({wall / len(batches) * 1000:.1f} ms each)")


# --------------------------------------------------------------------------------------------


def parse_hours(text_value: str) -> list[int]:
    return sorted({int(v) for v in text_value.split(",")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=16,
                        help="concurrent agents, one node each (default 16)")
    parser.add_argument("--idle-nodes", type=int, default=0,
                        help="more nodes with history that post nothing (default 0)")
    parser.add_argument("--stages", default="0,1,24,720",
                        help="history sizes in hours, comma-separated (default 0,1,24,720)")
    parser.add_argument("--all-nodes-max-h", type=int, default=24,
                        help="history beyond this depth goes only to --full-history-nodes")
    parser.add_argument("--full-history-nodes", type=int, default=4,
                        help="nodes given the deepest history (default 4)")
    parser.add_argument("--workers", default="1,2", help="server workers to try (default 1,2)")
    parser.add_argument("--variants", default="1hz,10s", help="push shapes (default 1hz,10s)")
    parser.add_argument("--run-s", type=float, default=6.0,
                        help="seconds each measurement posts for (default 6)")
    parser.add_argument("--load-jobs", type=int, default=1,
                        help="connections loading history in parallel (default 1)")
    parser.add_argument("--load-budget-s", type=float, default=210.0,
                        help="seconds each history size may spend inserting; what fits is "
                             "loaded, node by node, and printed (default 210)")
    parser.add_argument("--shared-buffers", default="1GB")
    parser.add_argument("--jobs-per-node", type=int, default=None,
                        help="jobs on every node (default: 1 to 4 by node); 32 gives the "
                             "1,400-record 1-Hz pushes of a busy node")
    args = parser.parse_args()
    global JOBS_PER_NODE
    JOBS_PER_NODE = args.jobs_per_node
    stages = parse_hours(args.stages)
    workers = [int(w) for w in args.workers.split(",")]
    variants = args.variants.split(",")
    n_nodes = args.agents + args.idle_nodes
    full_nodes = min(args.full_history_nodes, n_nodes)
    started = time.perf_counter()

    print(f"conditions: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f} at "
          f"start), PostgreSQL from tests/pgserver.py (fsync off, synchronous_commit off), "
          f"shared_buffers {args.shared_buffers}; {args.agents} agents (threads, 1 HTTP "
          f"connection each, same host); {len(SOURCES)} sources per node, "
          f"{JOBS_PER_NODE or '1-4'} jobs by node "
          f"(mean {statistics.mean(jobs_on(i) for i in range(args.agents)):.2f}) + "
          f"unattributed; a push every {PUSH_S} s of data: 1hz = 10 intervals of 1 s, "
          "10s = 1 interval of 10 s (coalesced)")
    pg = load_pgserver()
    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    deepest = timedelta(hours=max(stages))
    with pg.PgServer(bindir) as server:
        url = server.create_database("bench")
        pg_tune(server, url, args.shared_buffers)
        upgrade(url)
        engine = make_engine(url, pool_size=max(2, args.load_jobs))
        with engine.begin() as conn:  # every month from the deepest history to the live data
            year, month = (anchor - deepest).year, (anchor - deepest).month
            while (year, month) <= (anchor.year, anchor.month):
                create_month_partition(conn, year, month)
                year, month = add_months(year, month, 1)
        servers = {w: start_server(url, w) for w in workers}
        try:
            for proc, server_url in servers.values():
                wait_ready(server_url, proc)
            agents = [Agent(i, anchor) for i in range(args.agents)]
            print(f"live data from {anchor:%Y-%m-%d %H:%M} UTC on; history before it")
            # warm-up: a few pushes per agent and server (imports, pools, plans)
            stored = 0  # energy_interval rows
            stored_node_s = 0  # node-seconds of data stored
            loads: list[Loaded] = []
            for w, (_proc, server_url) in servers.items():
                warm = Run("warm", "10s", w)
                run_http(server_url, agents, "10s", 2, 60.0, warm)
                stored += warm.records
                stored_node_s += warm.node_seconds
            # pushes prepared per agent for a run, adapted to the rates seen
            per_agent = {v: 30 if v == "1hz" else 60 for v in variants}
            depth = {i: 0.0 for i in range(n_nodes)}  # hours of history loaded per node
            runs: list[Run] = []
            for stage_h in stages:
                spans = {}
                for i in range(n_nodes):
                    want = stage_h if stage_h <= args.all_nodes_max_h or i < full_nodes else (
                        min(stage_h, args.all_nodes_max_h))
                    if want > depth[i]:
                        spans[i] = (anchor - timedelta(hours=want),
                                    anchor - timedelta(hours=depth[i]))
                name = f"{stage_h} h" if stage_h < 48 else f"{stage_h // 24} d"
                print(f"\n== history {name} ==")
                if spans:
                    loaded = load_history(engine, url, spans, args.load_jobs, args.load_budget_s)
                    for i, (lo, _hi) in loaded.spans.items():
                        depth[i] = (anchor - lo).total_seconds() / 3600
                    short = (f" (--load-budget-s {args.load_budget_s:g} s reached: the rest "
                             "not loaded)") if loaded.cut_short else ""
                    print(
                        f"  loaded {loaded.rows:,} energy_interval rows "
                        f"({loaded.node_seconds // 3600:,} node-hours of 10-s intervals) in "
                        f"{loaded.insert_s:.1f} s = "
                        f"{loaded.rows / max(loaded.insert_s, 1e-9):,.0f} rows/s{short}; totals "
                        f"{loaded.totals_s:.1f} s, VACUUM ANALYZE {loaded.vacuum_s:.1f} s; "
                        f"{loaded.ei_delta / max(loaded.rows, 1):.0f} B/row as bulk-loaded")
                    stored += loaded.rows
                    stored_node_s += loaded.node_seconds
                    loads.append(loaded)
                by_depth: dict[float, int] = defaultdict(int)
                for i in range(n_nodes):
                    by_depth[depth[i]] += 1
                print("  stored: " + ", ".join(
                    f"{count} nodes × {h:g} h" + (f" ({h / 24:.1f} d)" if h >= 48 else "")
                    for h, count in sorted(by_depth.items()))
                    + f" of history; energy_interval {stored:,} rows, "
                    f"{human(ei_bytes(engine))} with indexes; database {human(db_bytes(engine))}")
                for variant in variants:
                    for w in workers:
                        run = Run(name, variant, w, ei_rows_before=stored)
                        ei0, other0 = ei_bytes(engine), other_bytes(engine)
                        run_http(servers[w][1], agents, variant, per_agent[variant], args.run_s,
                                 run)
                        run.ei_delta = ei_bytes(engine) - ei0
                        run.other_delta = other_bytes(engine) - other0
                        runs.append(run)
                        stored += run.records
                        stored_node_s += run.node_seconds
                        print(run.line(), flush=True)
                        rate = run.batches / run.wall_s / len(agents)
                        per_agent[variant] = max(per_agent[variant],
                                                 math.ceil(rate * args.run_s * 1.6) + 4)
            print("\n== ceilings, with the deepest history ==")
            for variant in variants:
                for group in (1, 8):
                    print(ingest_in_process(engine, agents, 6, variant, group))
                    stored_node_s += len(agents) * 6 * PUSH_S
            for line in copy_ceiling(engine, agents, 25):
                print(line)
        finally:
            for proc, _url in servers.values():
                proc.terminate()
            for proc, _url in servers.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()

        print("\n== storage per node-day ==")
        with engine.connect() as conn:
            batch_rows = conn.execute(text("SELECT count(*) FROM ingested_batch")).scalar_one()
        per_push = table_bytes(engine, "ingested_batch") / batch_rows
        push_day = per_push * 86400 / PUSH_S
        totals_day = (other_bytes(engine) - table_bytes(engine, "ingested_batch")) / (
            stored_node_s / 86400)
        ok = [r for r in runs if not r.errors]
        per_row = sum(r.ei_delta for r in ok) / max(1, sum(r.records for r in ok))
        print(f"  energy_interval + indexes as ingest writes them: {per_row:.0f} B/row (size "
              f"growth over all HTTP runs / their {sum(r.records for r in ok):,} rows; the row "
              "is the same in both shapes)")
        projection = []
        for variant in variants:
            mine = [r for r in ok if r.variant == variant]
            node_s = sum(r.node_seconds for r in mine)
            if not node_s:
                continue
            rows_per_node_s = sum(r.records for r in mine) / node_s
            rows_day = rows_per_node_s * 86400
            ei_day = rows_day * per_row
            own = sum(r.ei_delta for r in mine) / sum(r.records for r in mine)
            print(f"  {variant}: {rows_day:,.0f} rows/node-day = {human(ei_day)}/node-day "
                  f"(its own runs alone: {own:.0f} B/row over {sum(r.records for r in mine):,} "
                  "rows)")
            best = max(mine, key=lambda r: r.records / r.wall_s)
            projection.append((variant, rows_per_node_s, ei_day, best))
        if loads:
            node_s = sum(load.node_seconds for load in loads)
            rows = sum(load.rows for load in loads)
            ei_day = sum(load.ei_delta for load in loads) / node_s * 86400
            print(f"  10s as bulk-loaded history: {rows / node_s * 86400:,.0f} rows/node-day, "
                  f"{human(ei_day)}/node-day ({ei_day * node_s / 86400 / rows:.0f} B/row: "
                  "indexes built in order are denser than ingest's)")
        print(f"  ingested_batch (both shapes): {per_push:.0f} B per push = {human(push_day)}"
              "/node-day; `db maintain` prunes keys a day older than the retained intervals")
        print(f"  per-job and per-node totals (job, job_energy, job_energy_hour, job_node, "
              f"node_energy, ...): {human(totals_day)}/node-day (their size / "
              f"{stored_node_s / 86400:,.1f} node-days stored; jobs of 6 h, 1-4 per node)")
        print("\n== projection: 10 000 nodes, 1 year (a push every 10 s per node) ==")
        nodes = 10_000
        print(f"  both shapes: {nodes / PUSH_S:,.0f} batches/s; ingested_batch "
              f"{human(push_day * nodes)}/day, {human(push_day * nodes * 365)}/year; totals "
              f"{human(totals_day * nodes)}/day, {human(totals_day * nodes * 365)}/year "
              "(totals kept forever; with --retention-days 30 the batch keys of about 31 days: "
              f"{human(push_day * nodes * 31)})")
        for variant, rows_per_node_s, ei_day, best in projection:
            need = rows_per_node_s * nodes
            have = best.records / best.wall_s
            print(
                f"  {variant}: {need:,.0f} records/s needed (best here: {have:,.0f} records/s, "
                f"{best.batches / best.wall_s:.0f} batches/s, {best.workers} worker(s), history "
                f"{best.stage}: {need / have:.1f}× short); energy_interval "
                f"{human(ei_day * nodes)}/day, {human(ei_day * nodes * 365)}/year kept whole, "
                f"{human(ei_day * nodes * 61)} at most with --retention-days 30 (30 days + the "
                "month not yet past them)")
        print(f"\ndatabase at the end {human(db_bytes(engine))}; bench wall time "
              f"{time.perf_counter() - started:.0f} s")
        engine.dispose()


if __name__ == "__main__":
    main()
