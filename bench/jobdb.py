"""A PostgreSQL database of many jobs for the read benchmarks, built in SQL, kept for reuse.

``populate`` fills the tables that a job lookup reads, as ingest would have left them, with
``INSERT … SELECT`` over ``generate_series`` (no row crosses the client): per job 1-4 Slurm
nodes, per distinct node 2 packages + 2 DRAM + 0/0/4/8 GPUs of ``job_energy``, a
``job_node`` row per node, 1-2 ``job_energy_hour`` rows, a ``batch`` step per component, a
``node_progress`` row per node (every job final) and the ``cluster_config`` rows. One job in
1000 has no Slurm start (only the first energy seen, ``begin_at``), as when the start event
has not arrived. 200 users (``user<n>``, uid 10000 + n), 50 accounts, one job every 30 s from
2026-01-01. Pseudo-random values come from ``hashint8`` of the job number, so a database of N
jobs is always the same.

Each table is truncated, loaded without its indexes and indexed afterwards in one
transaction; with ``wal_level=minimal`` (:class:`KeptPgServer` starts the server so) none of
it is WAL-logged. Then VACUUM ANALYZE (the visibility map makes index-only scans possible).

:class:`KeptPgServer` is ``tests/pgserver.py``'s server with a data directory that outlives
the run (``--pgdata``): build once at 10 M jobs, measure several versions of the code.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import text

from jobenergy.collector.db import make_engine

pg = load_pgserver()

#: Server settings of a kept cluster: the throwaway server's, plus no WAL for bulk loads.
KEPT_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 "
    "-c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=4GB"
)


class KeptPgServer:
    """A PostgreSQL cluster in ``root`` that outlives the run (reused when already there).

    As ``tests/pgserver.py``'s throwaway server (127.0.0.1, a free port, trust, durability
    off; as root, run as the ``postgres`` user), plus ``wal_level=minimal``.
    """

    def __init__(self, bindir: Path, root: Path, user: str = "postgres") -> None:
        self.bindir = bindir
        self.root = root.resolve()
        self.user = user
        self.port = pg.free_port()
        self._as_postgres = os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        """Return the cluster's data directory."""
        return self.root / "data"

    def _run(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")

    def start(self) -> KeptPgServer:
        """Start the cluster, creating it first when ``root`` holds none."""
        fresh = not (self.data_dir / "PG_VERSION").exists()
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        if fresh:
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
            )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} {KEPT_OPTIONS}"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "-t", "300", "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL."""
        engine = make_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                if not conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first():
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server; keep its directory."""
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                      "-w", "-t", "300", "stop")
        except RuntimeError:
            pass

    def __enter__(self) -> KeptPgServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _h(k: int) -> str:
    """SQL: a non-negative pseudo-random int of job number ``j`` (stream ``k``)."""
    return f"(hashint8(j * 64 + {k}) & 2147483647)::bigint"


#: One row per job: its number, id, owner, nodes and times.
SHAPE = f"""
CREATE TEMP TABLE shape AS
SELECT j, (1000000 + j)::text AS job_id,
       'user' || lpad(({_h(1)} % 200)::text, 3, '0') AS "user",
       10000 + {_h(1)} % 200 AS uid,
       'acct' || (j % 50) AS account,
       (ARRAY['node' || lpad(({_h(2)} % 2000)::text, 4, '0'),
              'node' || lpad(({_h(3)} % 2000)::text, 4, '0'),
              'node' || lpad(({_h(4)} % 2000)::text, 4, '0'),
              'node' || lpad(({_h(5)} % 2000)::text, 4, '0')])[1:1 + {_h(6)} % 4] AS nodes,
       (ARRAY[0, 0, 4, 8])[1 + {_h(7)} % 4] AS n_gpus,
       :t0 + j * interval '30 s' AS begin_at,
       :t0 + j * interval '30 s' + (60 + {_h(8)} % 86341) * interval '1 s' AS end_at,
       {_h(9)} % 1000 = 0 AS no_start
FROM generate_series(0, :n - 1) AS j
"""

SOURCES = """
CREATE TEMP TABLE src AS
SELECT * FROM (VALUES (0, -1, 'cpu', 'package-0'), (1, -1, 'cpu', 'package-1'),
                      (2, -1, 'dram', 'package-0/dram'), (3, -1, 'dram', 'package-1/dram'))
     AS base(k, g, component, source)
UNION ALL
SELECT 4 + g, g, 'gpu', 'gpu/GPU-' || g FROM generate_series(0, 7) AS g
"""

#: Table -> INSERT … SELECT from ``shape`` (the job table first).
LOADS: dict[str, str] = {
    "job": f"""
INSERT INTO job (cluster, job_id, "user", uid, account, partition, name, nodes, gpus, comment,
                 state, exit_code, tags, start_at, end_at, updated_at, begin_at, energy_uj,
                 gpu_uj, facility_uj, co2e_ug, gpu_s, annotated)
SELECT 'bench', job_id, "user", uid, account, 'gpu', 'job' || j, to_jsonb(nodes), NULL, NULL,
       'COMPLETED', '0', '{{}}'::jsonb, CASE WHEN no_start THEN NULL ELSE begin_at END, end_at,
       end_at, begin_at, {_h(10)} * 1000, 0, 0, 0, 0, false
FROM shape
""",
    "job_energy": """
INSERT INTO job_energy (cluster, job_id, node, component, source, energy_uj, estimated_uj,
                        intervals, covered_s, first_at, last_at, wraps, resets, device_name)
SELECT 'bench', s.job_id, n.node, src.component, src.source,
       (hashint8(s.j * 64 + 16 + src.k + 12 * n.i) & 2147483647)::bigint * 465, 0,
       (hashint8(s.j * 64 + 40 + src.k + 12 * n.i) & 2147483647) % 10000, 3600.0,
       s.begin_at, s.end_at, 0, 0,
       CASE WHEN src.component = 'gpu' THEN 'NVIDIA H100 80GB HBM3' END
FROM shape s
CROSS JOIN LATERAL (SELECT node, row_number() OVER () AS i
                    FROM (SELECT DISTINCT unnest(s.nodes) AS node) d) n
JOIN src ON src.g < s.n_gpus
""",
    "job_node": """
INSERT INTO job_node (cluster, job_id, node, first_at, last_at, intervals)
SELECT 'bench', s.job_id, n.node, s.begin_at, s.end_at, 60
FROM shape s CROSS JOIN LATERAL (SELECT DISTINCT unnest(s.nodes)) AS n(node)
""",
    "job_energy_hour": f"""
INSERT INTO job_energy_hour (cluster, job_id, hour_at, energy_uj, facility_uj, co2e_ug, pue,
                             carbon_g_per_kwh, pue_source, carbon_source)
SELECT 'bench', s.job_id, date_trunc('hour', s.begin_at) + h * interval '1 h',
       {_h(11)} * 1000, {_h(11)} * 1200, {_h(11)} * 1200 * 300 / 3600000, 1.2, 300.0,
       'constant', 'constant'
FROM shape s CROSS JOIN LATERAL generate_series(
    0, CASE WHEN s.end_at - s.begin_at > interval '1 h' THEN 1 ELSE 0 END) AS h
""",
    "job_step_energy": """
INSERT INTO job_step_energy (cluster, job_id, step, component, energy_uj)
SELECT 'bench', s.job_id, 'batch', c.component, 1000
FROM shape s JOIN (VALUES ('cpu', 0), ('dram', 0), ('gpu', 1)) AS c(component, needs_gpu)
  ON c.needs_gpu = 0 OR s.n_gpus > 0
""",
    # The server's defaults as query_bench's server stores them (PUE 1, no intensity), so
    # that starting it recomputes nothing; the bench cluster's own constants, as the hours say.
    "cluster_config": """
INSERT INTO cluster_config (cluster, pue, carbon_source, carbon_params, carbon_g_per_kwh,
                            carbon_label, updated_at)
VALUES ('', 1.0, NULL, NULL, NULL, NULL, :t0), ('bench', 1.2, 'constant', NULL, 300.0, NULL, :t0)
""",
    "node_progress": """
INSERT INTO node_progress (cluster, node, first_at, last_at, intervals, last_sources)
SELECT 'bench', 'node' || lpad(n::text, 4, '0'), :t0,
       :t0 + :n * interval '30 s' + interval '2 days', 1000000, 4
FROM generate_series(0, 1999) AS n
""",
}


def _indexes(conn: Any, table: str) -> tuple[list[str], list[str], list[str]]:
    """Return (drop statements, create statements, names) of ``table``'s primary key and
    indexes."""
    drops, creates, names = [], [], []
    for name, definition in conn.execute(text(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) AND contype = 'p'"), {"t": table}):
        drops.append(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        creates.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        names.append(name)
    for name, definition in conn.execute(text(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = CAST(:t AS regclass) AND NOT x.indisprimary"), {"t": table}):
        drops.append(f'DROP INDEX "{name}"')
        creates.append(definition)
        names.append(name)
    return drops, creates, names


def populate(db_url: str, n_jobs: int, t0: Any) -> dict[str, float]:
    """Fill the job tables with ``n_jobs`` jobs (see the module docstring); return seconds
    spent per step."""
    timings: dict[str, float] = {}
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
            conn.execute(text("SET LOCAL work_mem = '256MB'"))
            conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 2"))
            begin = time.perf_counter()
            conn.execute(text(SHAPE), {"n": n_jobs, "t0": t0})
            conn.execute(text(SOURCES))
            timings["shape"] = time.perf_counter() - begin
            for table, load in LOADS.items():
                begin = time.perf_counter()
                conn.execute(text(f"TRUNCATE {table}"))
                drops, creates, _ = _indexes(conn, table)
                for statement in drops:
                    conn.execute(text(statement))
                rows = conn.execute(text(load), {"n": n_jobs, "t0": t0}).rowcount
                loaded = time.perf_counter()
                for statement in creates:
                    conn.execute(text(statement))
                timings[table] = time.perf_counter() - begin
                print(f"  {table}: {rows:,} rows in {loaded - begin:.1f} s, "
                      f"indexed in {time.perf_counter() - loaded:.1f} s", flush=True)
        begin = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in LOADS:
                conn.execute(text(f"VACUUM (ANALYZE) {table}"))
        timings["vacuum analyze"] = time.perf_counter() - begin
    finally:
        engine.dispose()
    return timings


def database_size(db_url: str) -> str:
    """Return the database's size, pretty-printed."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(
                text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar())
    finally:
        engine.dispose()
