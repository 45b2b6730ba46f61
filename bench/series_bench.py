"""Latency of the power series endpoints over months of raw intervals in PostgreSQL.

Starts a throwaway PostgreSQL (tests/pgserver.py), loads ``--days`` of history for ``--nodes``
nodes by SQL (``generate_series``: one interval every ``--interval-s`` seconds, off the whole
second by 3.7 s so that intervals cross bucket edges as agents' do; 2 CPU packages, 2 DRAM
zones, 8 GPUs per node; each interval's energy shared by the node's current job (3/4) and the
node's unattributed account), then the totals ingest would keep (``job``, ``job_energy``,
``node_energy``, ``node_progress``) by GROUP BY over what was loaded, and ``node_energy_hour``
by the backfill of its migration (``collector/node_hours.py``: what ingest would have written).
Node 0 runs 1-h jobs back to back, node 1 3-day jobs, the others 6-h jobs.

Then times, in-process (FastAPI TestClient over ``create_app``, no network), one request at a
time, at most 1000 buckets each:

- ``GET /api/v1/jobs/{id}/series``: a 1-h job, a 3-day job, and a 1-h zoom into the 3-day job
  (default step, raw intervals);
- ``GET /api/v1/nodes/{node}/series``: one node-day (default step: raw intervals) and one
  node-week (default step: whole hours, ``node_energy_hour``);
- ``GET /api/v1/clusters/{c}/series``: the last 7 days of every node from the raw intervals
  (``step=900``, the default before hourly data), the same with the default step (whole
  hours), and the last 30 days (or all loaded, if fewer) at ``step=1h``.

Prints p50/p99 per query with the rows it covers (raw intervals or hours), the buckets and
lines answered and the indexes its plan reads (EXPLAIN), and the job index's size. Asserts
nothing.

    .venv/bin/python bench/series_bench.py                       # 4 nodes × 8 days, 10-s
    .venv/bin/python bench/series_bench.py --nodes 16 --days 30  # bigger (a while to load)
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from ingest_bench import GPU_NAME, POWER_W, SOURCES, human, pg_tune
from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import Engine, event, text

from jobenergy.api.app import create_app
from jobenergy.api.series_queries import WORK_MEM
from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.node_hours import backfill
from jobenergy.collector.partitions import add_months, create_month_partition
from jobenergy.collector.settings import ServerSettings

CLUSTER = "bench"
OFFSET_S = 3.7
JOB_LEN_S = {0: 3600, 1: 3 * 86400}  # others: 6 h
DEFAULT_JOB_LEN_S = 6 * 3600

_EI_SQL = """
INSERT INTO energy_interval
    (cluster, node, job_id, component, source, start_at, end_at, energy_uj, estimated)
SELECT :cluster, :node,
       CASE WHEN v.slot = 0 THEN NULL ELSE
            (:ni * 1000000 + floor((extract(epoch FROM t) - :origin) / :job_len))::bigint::text
       END,
       v.component, v.source, t, t + make_interval(secs => :iv),
       CASE WHEN v.slot = 1 THEN m.uj * 3 / 4 ELSE m.uj - m.uj * 3 / 4 END, false
FROM generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz)
                     - make_interval(secs => :iv), make_interval(secs => :iv)) AS t
CROSS JOIN LATERAL (VALUES {values}) AS v(component, source, slot, base)
CROSS JOIN LATERAL (SELECT v.base + (floor(extract(epoch FROM t))::bigint % 13) * 1000 AS uj)
    AS m
"""

_TOTALS_SQL = [
    """INSERT INTO job_energy (cluster, job_id, node, component, source, energy_uj,
           estimated_uj, intervals, covered_s, first_at, last_at, wraps, resets, device_name)
       SELECT cluster, job_id, node, component, source, sum(energy_uj), 0, count(*),
              sum(extract(epoch FROM end_at - start_at)), min(start_at), max(end_at), 0, 0,
              CASE WHEN component = 'gpu' THEN :gpu_name END
       FROM energy_interval WHERE job_id IS NOT NULL
       GROUP BY cluster, job_id, node, component, source""",
    """INSERT INTO job (cluster, job_id, "user", uid, account, partition, name, nodes, state,
           start_at, end_at, updated_at, begin_at, energy_uj, gpu_uj, facility_uj, co2e_ug,
           gpu_s, annotated)
       SELECT cluster, job_id, 'user' || (job_id::bigint % 37), 1000, 'acct', 'gpu',
              'train-' || job_id, jsonb_build_array(min(node)), 'COMPLETED', min(first_at),
              max(last_at), now(), min(first_at), sum(energy_uj),
              sum(energy_uj) FILTER (WHERE component = 'gpu'), sum(energy_uj), 0,
              coalesce(sum(covered_s) FILTER (WHERE component = 'gpu'), 0), false
       FROM job_energy GROUP BY cluster, job_id""",
    """INSERT INTO node_energy (cluster, node, component, source, measured_uj, unattributed_uj,
           intervals, first_at, last_at)
       SELECT cluster, node, component, source, sum(energy_uj),
              coalesce(sum(energy_uj) FILTER (WHERE job_id IS NULL), 0),
              count(*) FILTER (WHERE job_id IS NULL), min(start_at), max(end_at)
       FROM energy_interval GROUP BY cluster, node, component, source""",
    """INSERT INTO node_progress (cluster, node, first_at, last_at, intervals, last_sources)
       SELECT cluster, node, min(first_at), max(last_at), max(intervals), count(*)
       FROM node_energy GROUP BY cluster, node""",
]


def node_name(index: int) -> str:
    return f"node{index:03d}"


def job_len(index: int) -> int:
    return JOB_LEN_S.get(index, DEFAULT_JOB_LEN_S)


def job_at(index: int, origin: datetime, moment: datetime) -> str:
    """The id of node ``index``'s job running at ``moment``."""
    return str(index * 1_000_000 + int((moment - origin).total_seconds()) // job_len(index))


def _values_sql(interval_s: float) -> str:
    rows = []
    for component, source in SOURCES:
        base = int(POWER_W[component] * interval_s * 1_000_000)
        rows.extend(f"('{component}', '{source}', {slot}, {base})" for slot in (0, 1))
    return ", ".join(rows)


def load(engine: Engine, nodes: int, days: int, interval_s: float, origin: datetime) -> int:
    """Insert the history, a node-day per statement; return the rows inserted."""
    rows = 0
    sql = text(_EI_SQL.format(values=_values_sql(interval_s)))
    for index in range(nodes):
        for day in range(days):
            lo = origin + timedelta(days=day)
            with engine.begin() as conn:
                rows += conn.execute(sql, {
                    "cluster": CLUSTER, "node": node_name(index), "ni": index,
                    "origin": origin.timestamp(), "job_len": job_len(index), "iv": interval_s,
                    "lo": lo, "hi": lo + timedelta(days=1)}).rowcount
    with engine.begin() as conn:
        for statement in _TOTALS_SQL:
            conn.execute(text(statement), {"gpu_name": GPU_NAME})
    return rows


def load_hours(engine: Engine) -> tuple[int, float]:
    """Fill node_energy_hour from the loaded intervals; return its rows and the seconds."""
    begin = time.perf_counter()
    with engine.begin() as conn:
        hours = backfill(conn)
    return hours, time.perf_counter() - begin


def vacuum(url: str) -> None:
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("VACUUM (ANALYZE) energy_interval, job, job_energy, node_energy, "
                              "node_energy_hour, node_progress"))
    finally:
        engine.dispose()


def _bucketing(statement: str) -> bool:
    """The statement of a series that reads the rows: raw intervals (grouped by ``k1``) or
    hours."""
    return (("AS k1" in statement or "FROM node_energy_hour" in statement)
            and not statement.startswith("EXPLAIN"))


class Recorder:
    """Keeps the bucketing statement a request ran (:func:`_bucketing`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statement: tuple[str, Any] | None = None
        self.durations: list[float] = []
        self._began = 0.0
        event.listen(engine, "before_cursor_execute", self._record)
        event.listen(engine, "after_cursor_execute", self._done)

    def _record(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any,
                executemany: bool) -> None:
        if _bucketing(statement):
            self.statement = (statement, params)
            self._began = time.perf_counter()

    def _done(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:
        if _bucketing(statement):
            self.durations.append(time.perf_counter() - self._began)

    def explain(self, analyze: bool = False) -> str:
        """Return the recorded statement's plan (run, with ``analyze``)."""
        assert self.statement is not None
        statement, params = self.statement
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SET jit = off")  # as the endpoint does (series_queries.py)
            conn.exec_driver_sql(f"SET work_mem = '{WORK_MEM}'")
            return "\n".join(r[0] for r in conn.exec_driver_sql(prefix + statement, params))

    def indexes(self) -> str:
        """Return the indexes the recorded statement's plan reads (EXPLAIN, not run)."""
        if self.statement is None:
            return "-"
        plan = self.explain()
        names = sorted(set(re.findall(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)"
                                      r"(?: Backward)? (?:using|on) (\S+)", plan)))
        kinds = {re.sub(r"^energy_interval_(p\d{4}_\d{2}|default)_", "", n) for n in names}
        return ", ".join(sorted(kinds)) or "no index"


def job_index_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_stat_user_indexes "
            "WHERE indexrelname LIKE '%job_id_start_at%'")).scalar_one())


def covered_rows(engine: Engine, table: str, where: str, params: dict[str, Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"),
                                params).scalar_one())


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    return f"p50 {at(0.5):8.1f} ms  p99 {at(0.99):8.1f} ms  (n={len(ordered)})"


def timed(client: TestClient, path: str, params: dict[str, str], repeat: int
          ) -> tuple[list[float], dict[str, Any]]:
    out: dict[str, Any] = {}
    samples = []
    for i in range(repeat + 2):
        begin = time.perf_counter()
        response = client.get(path, params=params)
        elapsed = time.perf_counter() - begin
        if response.status_code != 200:
            sys.exit(f"{path} {params}: {response.status_code} {response.text}")
        out = response.json()
        if i >= 2:  # two warm-ups: imports, pools, plans, caches
            samples.append(elapsed)
    return samples, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--shared-buffers", default="512MB")
    parser.add_argument("--explain", action="store_true",
                        help="print each bucketing statement's EXPLAIN (ANALYZE, BUFFERS)")
    args = parser.parse_args()
    if args.nodes < 3 or args.days < 8:
        sys.exit("needs at least 3 nodes and 8 days (a 3-day job whole, a cluster week)")
    origin = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=OFFSET_S)
    end = origin + timedelta(days=args.days)
    pg = load_pgserver()
    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    with pg.PgServer(bindir) as server:
        url = server.create_database("bench")
        pg_tune(server, url, args.shared_buffers)
        upgrade(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            year, month = origin.year, origin.month
            while (year, month) <= (end.year, end.month):
                create_month_partition(conn, year, month)
                year, month = add_months(year, month, 1)
        begin = time.perf_counter()
        rows = load(engine, args.nodes, args.days, args.interval_s, origin)
        load_s = time.perf_counter() - begin
        hours, hours_s = load_hours(engine)
        begin = time.perf_counter()
        vacuum(url)
        print(f"history: {args.nodes} nodes × {args.days} days of {args.interval_s:g}-s "
              f"intervals, {len(SOURCES)} sources, 1 job + unattributed: {rows:,} "
              f"energy_interval rows loaded with totals in {load_s:.0f} s, {hours:,} "
              f"node_energy_hour rows by the migration's backfill in {hours_s:.1f} s (VACUUM "
              f"ANALYZE {time.perf_counter() - begin:.0f} s); job index "
              f"{human(job_index_bytes(engine))} = {job_index_bytes(engine) / max(rows, 1):.0f}"
              " B/row")
        mid = origin + timedelta(days=args.days // 2, hours=5)
        one_h = job_at(0, origin, mid)
        three_d = job_at(1, origin, origin + timedelta(days=4))
        zoom_lo = origin + timedelta(days=4, hours=12)
        day_lo = (origin + timedelta(days=args.days // 2)).replace(hour=0, minute=0, second=0,
                                                                   microsecond=0)
        week_lo = end - timedelta(days=7)
        month_days = min(30, args.days)
        month_lo = end - timedelta(days=month_days)
        iso = {"day": (day_lo.isoformat(), (day_lo + timedelta(days=1)).isoformat()),
               "week": (week_lo.isoformat(), end.isoformat()),
               "month": (month_lo.isoformat(), end.isoformat()),
               "zoom": (zoom_lo.isoformat(), (zoom_lo + timedelta(hours=1)).isoformat())}
        ei, neh = "energy_interval", "node_energy_hour"
        # Hours read: those starting in the window widened to whole hours.
        week_h = {"lo": week_lo.replace(minute=0, second=0, microsecond=0), "hi": end}
        month_h = {"lo": month_lo.replace(minute=0, second=0, microsecond=0), "hi": end}
        cases = [
            ("1-h job", f"/api/v1/jobs/{one_h}/series", {},
             ei, "job_id = :j", {"j": one_h}),
            ("3-day job", f"/api/v1/jobs/{three_d}/series", {},
             ei, "job_id = :j", {"j": three_d}),
            ("3-day job, 1-h zoom", f"/api/v1/jobs/{three_d}/series",
             {"start": iso["zoom"][0], "end": iso["zoom"][1]},
             ei, "job_id = :j AND start_at >= :lo AND start_at < :hi",
             {"j": three_d, "lo": zoom_lo, "hi": zoom_lo + timedelta(hours=1)}),
            ("node day", f"/api/v1/nodes/{node_name(2)}/series",
             {"start": iso["day"][0], "end": iso["day"][1]},
             ei, "node = :n AND start_at >= :lo AND start_at < :hi",
             {"n": node_name(2), "lo": day_lo, "hi": day_lo + timedelta(days=1)}),
            ("node week, hourly", f"/api/v1/nodes/{node_name(2)}/series",
             {"start": iso["week"][0], "end": iso["week"][1]},
             neh, "node = :n AND hour_at >= :lo AND hour_at < :hi",
             {"n": node_name(2), **week_h}),
            ("cluster week, raw", f"/api/v1/clusters/{CLUSTER}/series",
             {"start": iso["week"][0], "end": iso["week"][1], "step": "900"},
             ei, "component <> 'psys' AND start_at >= :lo AND start_at < :hi",
             {"lo": week_lo, "hi": end}),
            ("cluster week", f"/api/v1/clusters/{CLUSTER}/series",
             {"start": iso["week"][0], "end": iso["week"][1]},
             neh, "component <> 'psys' AND hour_at >= :lo AND hour_at < :hi", week_h),
            (f"cluster {month_days} d, 1 h", f"/api/v1/clusters/{CLUSTER}/series",
             {"start": iso["month"][0], "end": iso["month"][1], "step": "1h"},
             neh, "component <> 'psys' AND hour_at >= :lo AND hour_at < :hi", month_h),
        ]
        settings = ServerSettings(db_url=url, auth="none", migrate=False, pue=1.0,
                                  carbon_intensity_g_per_kwh=None)
        print(f"in-process TestClient, one request at a time; {args.repeat} timed requests "
              "after 2 warm-ups")
        app = create_app(settings)
        recorder = Recorder(app.state.engine)
        with TestClient(app) as client:
            for name, path, params, table, where, where_params in cases:
                recorder.statement = None
                samples, out = timed(client, path, params, args.repeat)
                sql_s = statistics.median(recorder.durations[-args.repeat:])
                n_rows = covered_rows(engine, table, where, where_params)
                lines = out.get("lines", [])
                kind = "hours" if table == neh else "rows"
                print(f"{name:20s} {percentiles(samples)}  (bucketing statement p50 "
                      f"{sql_s * 1000:6.1f} ms)  {n_rows:>9,} {kind:5s} {out['resolution']:8s}"
                      f" step {out['step_s']:>4} s × {len(out['t']):>4} buckets × "
                      f"{len(lines):>2} lines  [{recorder.indexes()}]")
                if args.explain:
                    print(recorder.explain(analyze=True))
        engine.dispose()


if __name__ == "__main__":
    main()
