"""Ingest throughput into PostgreSQL: end to end over HTTP, and ingest_batch alone.

Starts a throwaway PostgreSQL (tests/pgserver.py), serves ``create_app`` with uvicorn on
127.0.0.1 in a child process, and POSTs gzip'd batches of realistic size with httpx:
60 intervals × (2 packages + 2 DRAM + 8 GPUs) sources × (32 jobs + unattributed) shares
= 23 760 records per batch. Prints figures; asserts nothing.

    .venv/bin/python bench/ingest_bench.py [--batches 20] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.ingest import ingest_batch
from jobenergy.collector.models import EnergyInterval
from jobenergy.core.schema import Batch
from jobenergy.core.split import split_uj

T0 = datetime(2026, 11, 23, tzinfo=UTC)


def make_batch_dict(node: str, seq: int, n_intervals: int = 60, n_jobs: int = 32) -> dict:
    """Build one realistic batch as a plain dict (conserving energy by largest remainder)."""
    sources = [("cpu", f"package-{p}") for p in range(2)]
    sources += [("dram", f"package-{p}/dram") for p in range(2)]
    sources += [("gpu", f"gpu/GPU-{g:08x}-0000-0000-0000-000000000000") for g in range(8)]
    weights = {f"{100000 + seq % 7 * 100 + j}": 1 + j % 5 for j in range(n_jobs)}
    weights[""] = 3  # the node's unattributed share
    intervals = []
    for i in range(n_intervals):
        start = T0 + timedelta(seconds=(seq * n_intervals + i) * 10)
        srcs = []
        for s, (component, source) in enumerate(sources):
            measured = 2_500_000_000 + 1_000 * i + 7 * s
            parts = split_uj(measured, weights)
            unattributed = parts.pop("")
            srcs.append(
                {
                    "component": component,
                    "source": source,
                    "measured_uj": measured,
                    "jobs_uj": parts,
                    "unattributed_uj": unattributed,
                    "device_name": "NVIDIA H100 80GB HBM3" if component == "gpu" else None,
                }
            )
        intervals.append(
            {
                "start": start.isoformat(),
                "end": (start + timedelta(seconds=10)).isoformat(),
                "sources": srcs,
                "jobs": [{"job_id": j, "uid": 1000} for j in weights if j],
            }
        )
    return {
        "schema_version": 1,
        "cluster": "bench",
        "node": node,
        "boot_id": "boot",
        "seq": seq,
        "intervals": intervals,
    }


def records_of(batch: dict) -> int:
    return sum(
        len(s["jobs_uj"]) + (1 if s["unattributed_uj"] or not s["jobs_uj"] else 0)
        for iv in batch["intervals"]
        for s in iv["sources"]
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def bench_http(db_url: str, bodies: list[bytes], records: int, concurrency: int) -> None:
    pg = load_pgserver()
    port = pg.free_port()
    code = (
        "import uvicorn\n"
        "from jobenergy.api.app import create_app\n"
        "from jobenergy.collector.settings import ServerSettings\n"
        f"app = create_app(ServerSettings(db_url={db_url!r}, migrate=False, auth=\"none\"))\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        with httpx.Client(base_url=url, timeout=120.0) as client:

            def send(body: bytes) -> float:
                begin = time.perf_counter()
                response = client.post("/api/v1/batches", content=body, headers=headers)
                response.raise_for_status()
                assert response.json()["duplicate"] is False
                return time.perf_counter() - begin

            begin = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = sorted(pool.map(send, bodies))
            wall_s = time.perf_counter() - begin
            dup_begin = time.perf_counter()
            client.post("/api/v1/batches", content=bodies[0], headers=headers).raise_for_status()
            dup_ms = (time.perf_counter() - dup_begin) * 1000
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"HTTP end to end ({concurrency} concurrent): {len(bodies)} batches, {records} "
        f"records in {wall_s:.2f} s = {records / wall_s:,.0f} records/s; per batch p50 "
        f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
        f"duplicate ack {dup_ms:.0f} ms"
    )


def bench_ingest_only(db_url: str, batches: list[Batch], records: int) -> None:
    engine = make_engine(db_url)
    try:
        begin = time.perf_counter()
        for batch in batches:
            with Session(engine) as session, session.begin():
                result = ingest_batch(session, batch)
                assert not result.duplicate
        wall_s = time.perf_counter() - begin
        with Session(engine) as session:
            stored = session.scalar(select(func.count()).select_from(EnergyInterval))
    finally:
        engine.dispose()
    print(
        f"ingest_batch only (validated batches, 1 connection): {records} records in "
        f"{wall_s:.2f} s = {records / wall_s:,.0f} records/s ({stored:,} rows in table)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    dicts = [make_batch_dict(f"node{k % 4:03d}", k // 4) for k in range(args.batches)]
    records = sum(records_of(d) for d in dicts)
    raw = [json.dumps(d).encode() for d in dicts]
    bodies = [gzip.compress(r, compresslevel=6) for r in raw]
    print(
        f"{args.batches} batches of {records // args.batches} records; JSON "
        f"{len(raw[0]) / 1e6:.1f} MB, gzip {len(bodies[0]) / 1e6:.2f} MB each"
    )

    begin = time.perf_counter()
    validated = [Batch.model_validate_json(r) for r in raw]
    parse_s = time.perf_counter() - begin
    print(f"parse + validate (pydantic): {records / parse_s:,.0f} records/s")

    pg = load_pgserver()
    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    with pg.PgServer(bindir) as server:
        http_url = server.create_database("bench_http")
        direct_url = server.create_database("bench_direct")
        upgrade(http_url)
        upgrade(direct_url)
        bench_http(http_url, bodies, records, args.concurrency)
        bench_ingest_only(direct_url, validated, records)


if __name__ == "__main__":
    main()
