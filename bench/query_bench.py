"""Job lookup latency with many jobs in PostgreSQL.

Starts a throwaway PostgreSQL (tests/pgserver.py), loads N jobs (default 100 000) with their
per-node, per-source ``job_energy`` totals by COPY (as ingest would have left them: 1-4 nodes,
2 packages + 2 DRAM + 0-8 GPUs per node), serves ``create_app`` with uvicorn on 127.0.0.1 and
times ``GET /api/v1/jobs/{id}?cluster=`` and a filtered ``GET /api/v1/jobs`` page over HTTP.
Prints p50/p99; asserts nothing.

    .venv/bin/python bench/query_bench.py [--jobs 100000] [--lookups 2000]
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import text

from jobenergy.collector.db import make_engine, upgrade

T0 = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [f"user{u:03d}" for u in range(200)]


def populate(db_url: str, n_jobs: int, rng: random.Random) -> int:
    """COPY ``n_jobs`` jobs and their job_energy rows; return the number of energy rows."""
    jobs, energy = io.StringIO(), io.StringIO()
    n_energy = 0
    for j in range(n_jobs):
        job_id = str(1_000_000 + j)
        start = T0 + timedelta(seconds=j * 30)
        end = start + timedelta(seconds=rng.randint(60, 86_400))
        n_nodes, n_gpus = rng.randint(1, 4), rng.choice([0, 0, 4, 8])
        nodes = [f"node{rng.randrange(2000):04d}" for _ in range(n_nodes)]
        nodes_json = "[" + ",".join(f'"{n}"' for n in nodes) + "]"
        jobs.write(
            f"bench\t{job_id}\t{rng.choice(USERS)}\t1000\tacct{j % 50}\tgpu\tjob{j}\t"
            f"{nodes_json}\t\\N\t\\N\tCOMPLETED\t0\t{{}}\t{start.isoformat()}\t"
            f"{end.isoformat()}\t{end.isoformat()}\n"
        )
        for node in dict.fromkeys(nodes):
            sources = [
                ("cpu", "package-0"),
                ("cpu", "package-1"),
                ("dram", "package-0/dram"),
                ("dram", "package-1/dram"),
            ]
            sources += [("gpu", f"gpu/GPU-{g}") for g in range(n_gpus)]
            for component, source in sources:
                device = "NVIDIA H100 80GB HBM3" if component == "gpu" else "\\N"
                energy.write(
                    f"bench\t{job_id}\t{node}\t{component}\t{source}\t"
                    f"{rng.randrange(10**12)}\t0\t{rng.randrange(10_000)}\t3600.0\t"
                    f"{start.isoformat()}\t{end.isoformat()}\t0\t0\t{device}\n"
                )
                n_energy += 1
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            dbapi = conn.connection.dbapi_connection
            with dbapi.cursor() as cur:
                with cur.copy(
                    'COPY job (cluster, job_id, "user", uid, account, partition, name, nodes, '
                    "gpus, comment, state, exit_code, tags, start_at, end_at, updated_at) "
                    "FROM STDIN"
                ) as copy:
                    copy.write(jobs.getvalue())
                with cur.copy(
                    "COPY job_energy (cluster, job_id, node, component, source, energy_uj, "
                    "estimated_uj, intervals, covered_s, first_at, last_at, wraps, resets, "
                    "device_name) FROM STDIN"
                ) as copy:
                    copy.write(energy.getvalue())
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return n_energy


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    args = parser.parse_args()
    rng = random.Random(42)

    pg = load_pgserver()
    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    with pg.PgServer(bindir) as server:
        db_url = server.create_database("bench_query")
        upgrade(db_url)
        begin = time.perf_counter()
        n_energy = populate(db_url, args.jobs, rng)
        print(
            f"loaded {args.jobs:,} jobs, {n_energy:,} job_energy rows in "
            f"{time.perf_counter() - begin:.1f} s"
        )
        port = pg.free_port()
        code = (
            "import uvicorn\n"
            "from jobenergy.api.app import create_app\n"
            "from jobenergy.collector.settings import ServerSettings\n"
            f"app = create_app(ServerSettings(db_url={db_url!r}, migrate=False, auth=\"none\"))\n"
            f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=30.0) as client:
                for _ in range(300):
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                for _ in range(50):  # warm up connections and caches
                    client.get(f"/api/v1/jobs/{1_000_000 + rng.randrange(args.jobs)}")
                for label, params in (
                    ("with ?cluster=", {"cluster": "bench"}),
                    ("without cluster", {}),
                ):
                    samples = []
                    for _ in range(args.lookups):
                        job_id = 1_000_000 + rng.randrange(args.jobs)
                        begin = time.perf_counter()
                        response = client.get(f"/api/v1/jobs/{job_id}", params=params)
                        samples.append(time.perf_counter() - begin)
                        response.raise_for_status()
                    print(f"GET /api/v1/jobs/{{id}} {label}: {percentiles(samples)}")
                samples = []
                for _ in range(200):
                    params = {"user": rng.choice(USERS), "limit": 100}
                    begin = time.perf_counter()
                    response = client.get("/api/v1/jobs", params=params)
                    samples.append(time.perf_counter() - begin)
                    response.raise_for_status()
                print(
                    f"GET /api/v1/jobs?user=U&limit=100 (~{args.jobs // len(USERS)} matches, "
                    f"total counted): {percentiles(samples)}"
                )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
