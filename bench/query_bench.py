"""Job lookup and job list latency with many jobs in PostgreSQL.

Builds N jobs (default 100 000) in SQL (``bench/jobdb.py``: ``job``, ``job_energy`` 1-4 nodes
× 2 packages + 2 DRAM + 0/0/4/8 GPUs, ``job_node``, ``job_energy_hour``, ``job_step_energy``,
``node_progress``) and prints how long that took; materialises every job's detail as the
server does once jobs settle (``collector/job_details.py``; ``--live-parts``: not) and prints
how long that took; serves ``create_app`` with uvicorn (one
process) on 127.0.0.1 and times over HTTP, one request at a time:

- ``GET /api/v1/jobs/{id}`` with and without ``?cluster=``, random jobs of the whole range;
- ``GET /api/v1/jobs?user=U&limit=100``: the first page (``total`` counted), then deep pages
  by ``offset`` and, when the server returns ``next``, by ``after`` (the same rows);
- ``GET /api/v1/jobs?limit=100`` (every job, newest first), and with ``count=false``.
- in-process, a user's own list in a PrivateData scope (name and uid, as MUNGE gives; a
  coordinator's accounts): users with jobs, without any, and coordinators.

Each line also gives, per request, the CPU time of the API server process and of PostgreSQL
(the postmaster and its children) and what PostgreSQL read from storage (not the page cache):
where the time goes, whatever else runs on the machine. Then, with code that has
``routes_jobs.read_session`` (a lookup in one statement), a lookup is split in-process as its
worker thread runs it: session and connection, statement, building the answer, JSON. Prints
p50/p99 (and p99.9 for lookups); asserts nothing.

``--pgdata DIR`` keeps the PostgreSQL cluster in DIR and reuses a database already built
there for the same N (build once at 10 M jobs, time several versions of the code).

    .venv/bin/python bench/query_bench.py [--jobs 100000] [--lookups 2000] [--lists 200]
        [--unfiltered 20] [--recent-jobs N] [--pgdata DIR] [--rebuild] [--build-only]
        [--live-parts] [--seed 42]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from jobdb import KeptPgServer, database_size, pg, populate
from sqlalchemy import text

from jobenergy.collector import job_details
from jobenergy.collector.db import make_engine, upgrade

T0 = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [f"user{u:03d}" for u in range(200)]


def percentiles(samples_s: list[float], tail: bool = False) -> str:
    ordered = sorted(samples_s)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    out = f"p50 {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms"
    if tail:
        out += f", p99.9 {at(0.999):.2f} ms"
    return out + f" (n={len(ordered)})"


def built_jobs(db_url: str) -> int | None:
    """Return the N of the database's completed build, None when there is none."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            comment = conn.execute(text(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = current_database()")).scalar()
    finally:
        engine.dispose()
    if comment and comment.startswith("jobs="):
        return int(comment.removeprefix("jobs="))
    return None


def build(db_url: str, n_jobs: int, rebuild: bool) -> None:
    """Migrate, then fill the database unless a build of ``n_jobs`` jobs is there."""
    begin = time.perf_counter()
    upgrade(db_url)
    print(f"migrated to head in {time.perf_counter() - begin:.1f} s", flush=True)
    if not rebuild and built_jobs(db_url) == n_jobs:
        print(f"reusing the database of {n_jobs:,} jobs ({database_size(db_url)})")
        return
    print(f"building {n_jobs:,} jobs in SQL ...", flush=True)
    begin = time.perf_counter()
    steps = populate(db_url, n_jobs, T0)
    elapsed = time.perf_counter() - begin
    engine = make_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar()
            conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS 'jobs={n_jobs}'"))
    finally:
        engine.dispose()
    print(f"built {n_jobs:,} jobs in {elapsed:.1f} s ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
          + f"), database {database_size(db_url)}", flush=True)


def materialise_details(db_url: str) -> None:
    """Materialise every job's detail, as the server does once jobs settle
    (``collector/job_details.py``), and print how long that took."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            # The built jobs' last changes run into the future: all of them count as settled.
            latest = conn.execute(text("SELECT max(updated_at) FROM job")).scalar()
        begin = time.perf_counter()
        written = job_details.materialise(engine, now=max(latest, datetime.now(UTC)),
                                          settle=timedelta(0)) or 0
        elapsed = time.perf_counter() - begin
        with engine.connect() as conn:
            size, rows = conn.execute(text(
                "SELECT pg_total_relation_size('job_detail'), count(*) FROM job_detail")).one()
    finally:
        engine.dispose()
    rate = f" ({written / elapsed:,.0f} jobs/s)" if written else ""
    per_job = f", {size / rows:,.0f} B per job with its index" if rows else ""
    print(f"materialised {written:,} job details in {elapsed:.1f} s{rate}; job_detail "
          f"{size / 2**30:.1f} GiB for {rows:,} jobs{per_job}", flush=True)


def wait_healthy(client: httpx.Client) -> None:
    for _ in range(600):
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit("the server did not answer /healthz")


def timed_get(client: httpx.Client, path: str, params: dict[str, Any]) -> tuple[float, Any]:
    begin = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = time.perf_counter() - begin
    response.raise_for_status()
    return elapsed, response.json()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_bytes(pid: int) -> int:
    """Bytes a process has had read from storage (not from the page cache)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Meter:
    """CPU of the API server and of PostgreSQL (the postmaster and its children), and what
    PostgreSQL read from storage, over a run of requests: where the time goes, whatever else
    runs on the machine."""

    def __init__(self, server_pid: int, pgdata: Path | None) -> None:
        self.server_pid = server_pid
        self.postmaster = None
        if pgdata is not None:
            with contextlib.suppress(OSError, ValueError):
                pid_file = (pgdata / "postmaster.pid").read_text()
                self.postmaster = int(pid_file.split()[0])

    def _postgres(self) -> list[int]:
        if self.postmaster is None:
            return []
        pids = [self.postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    def snapshot(self) -> tuple[float, float, int]:
        pids = self._postgres()
        return (_cpu_s(self.server_pid), sum(_cpu_s(p) for p in pids),
                sum(_read_bytes(p) for p in pids))

    def report(self, before: tuple[float, float, int], n: int) -> str:
        server, postgres, read = (b - a for a, b in zip(before, self.snapshot(), strict=True))
        out = f"; per request: API server CPU {server / n * 1000:.2f} ms"
        if self.postmaster is not None:
            out += (f", PostgreSQL CPU {postgres / n * 1000:.2f} ms, "
                    f"read from disk {read / n / 1024:.0f} KiB")
        return out


def bench_http(url: str, args: argparse.Namespace, rng: random.Random, meter: Meter) -> None:
    def run(label: str, requests: list[tuple[str, dict[str, Any]]], tail: bool = False
            ) -> list[Any]:
        before, samples, bodies = meter.snapshot(), [], []
        for path, params in requests:
            elapsed, body = timed_get(client, path, params)
            samples.append(elapsed)
            bodies.append(body)
        print(f"{label}: {percentiles(samples, tail)}{meter.report(before, len(requests))}",
              flush=True)
        return bodies

    def random_job() -> str:
        return f"/api/v1/jobs/{1_000_000 + rng.randrange(args.jobs)}"

    def recent_jobs() -> list[str]:
        """``--lookups`` jobs among the newest ``--recent-jobs`` (those users look up: the
        last weeks')."""
        newest = 1_000_000 + args.jobs - 1
        return [f"/api/v1/jobs/{newest - k}"
                for k in rng.sample(range(args.recent_jobs), min(args.lookups, args.recent_jobs))]

    with httpx.Client(base_url=url, timeout=600.0) as client:
        wait_healthy(client)
        for _ in range(50):  # warm up connections and caches
            client.get(random_job())
        run("GET /api/v1/jobs/{id}?cluster=",
            [(random_job(), {"cluster": "bench"}) for _ in range(args.lookups)], tail=True)
        run("GET /api/v1/jobs/{id} (no cluster)",
            [(random_job(), {}) for _ in range(args.lookups)], tail=True)
        if args.recent_jobs:
            # Jobs users look at were written or read lately: in the cache. The same jobs
            # twice, in another order: the first pass reads them in, the second is the figure.
            paths = recent_jobs()
            for label in ("first read", "again, cached"):
                rng.shuffle(paths)
                run(f"GET /api/v1/jobs/{{id}}?cluster=, {len(paths):,} of the newest "
                    f"{args.recent_jobs:,}, {label}",
                    [(path, {"cluster": "bench"}) for path in paths], tail=True)

        per_user = args.jobs // len(USERS)
        first = run(
            f"GET /api/v1/jobs?user=U&limit=100, first page (~{per_user:,} matches, total "
            "counted)", [("/api/v1/jobs", {"user": rng.choice(USERS), "limit": 100})
                         for _ in range(args.lists)])
        # Deep pages: the same rows by offset and by the cursor of the row before them.
        depth = min(per_user // 2, 10_000)
        deep = [(rng.choice(USERS), rng.randrange(100, max(101, depth)))
                for _ in range(max(1, args.lists // 4))]
        by_offset = run(
            f"GET /api/v1/jobs?user=U&limit=100&offset=100..{depth}",
            [("/api/v1/jobs", {"user": u, "limit": 100, "offset": o}) for u, o in deep])
        if any("next" in body for body in first):
            # The cursor of the row before each page (none past the last row: page dropped).
            cursors = [
                client.get("/api/v1/jobs", params={"user": u, "limit": 1, "offset": o - 1}
                           ).json().get("next")
                for u, o in deep
            ]
            kept = [(d, b, c) for d, b, c in zip(deep, by_offset, cursors, strict=True) if c]
            deep = [d for d, _, _ in kept]
            by_offset = [b for _, b, _ in kept]
            cursors = [c for _, _, c in kept]
            by_cursor = [] if not deep else run(
                "GET /api/v1/jobs?user=U&limit=100&after=<cursor of the same rows>",
                [("/api/v1/jobs", {"user": u, "limit": 100, "after": c})
                 for (u, _), c in zip(deep, cursors, strict=True)])
            for a, b in zip(by_offset, by_cursor, strict=True):
                if [j["job_id"] for j in a["jobs"]] != [j["job_id"] for j in b["jobs"]]:
                    print("  !! a page by cursor differs from the page by offset")
        run(f"GET /api/v1/jobs?limit=100 (all {args.jobs:,} jobs, newest first)",
            [("/api/v1/jobs", {"limit": 100}) for _ in range(args.unfiltered)])
        if any("next" in body for body in first):
            run("GET /api/v1/jobs?limit=100&count=false (all jobs, not counted)",
                [("/api/v1/jobs", {"limit": 100, "count": "false"})
                 for _ in range(args.unfiltered)])


def bench_split(db_url: str, args: argparse.Namespace, rng: random.Random) -> None:
    """Split a lookup in-process, as ``GET /api/v1/jobs/{id}`` runs it in its worker thread:
    session and connection (the pool's pre-ping), the statement (round trip and parsing),
    building the answer, its JSON. Only for code that reads a lookup in one statement."""
    from types import SimpleNamespace

    from sqlalchemy.orm import sessionmaker

    from jobenergy.api import job_lookup, job_view, routes_jobs
    from jobenergy.api.schemas import JobOut

    if not hasattr(routes_jobs, "read_session"):
        return
    engine = make_engine(db_url)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(
        sessionmaker=sessionmaker(engine, expire_on_commit=False))))
    parts: dict[str, list[float]] = {
        "session and connection": [], "statement": [], "building the answer": [], "JSON": []}
    live: list[float] = []  # the statement with every part read live (other random jobs)
    try:
        for i in range(2 * args.lookups + 100):
            job_id = str(1_000_000 + rng.randrange(args.jobs))
            job_lookup.MATERIALISED = i % 2 == 0
            if not job_lookup.MATERIALISED:
                with routes_jobs.read_session(request) as session:
                    t1 = time.perf_counter()
                    job_lookup.lookup_details(session, job_id, "bench")
                    if i >= 100:
                        live.append(time.perf_counter() - t1)
                continue
            t0 = time.perf_counter()
            with routes_jobs.read_session(request) as session:
                t1 = time.perf_counter()
                details = job_lookup.lookup_details(session, job_id, "bench")
                t2 = time.perf_counter()
                out = job_view.view_of(details[0], job_view.DetailLabels(session, details))
                t3 = time.perf_counter()
            JobOut.__pydantic_serializer__.to_json(out)
            t4 = time.perf_counter()
            if i >= 100:
                for samples, seconds in zip(parts.values(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
                                            strict=True):
                    samples.append(seconds)
    finally:
        job_lookup.MATERIALISED = True
        engine.dispose()
    print("GET /api/v1/jobs/{id}?cluster= in-process (what its worker thread does):")
    for name, samples in parts.items():
        print(f"  {name}: {percentiles(samples, tail=name == 'statement')}")
    if live:
        print("  statement, every part read live (job_lookup.MATERIALISED off; other random "
              f"jobs, in turn with those above): {percentiles(live, tail=True)}")


def bench_scopes(db_url: str, args: argparse.Namespace, rng: random.Random) -> None:
    """Time a user's own list in-process, as ``GET /api/v1/jobs?limit=100`` reads it for a
    caller in a PrivateData scope (``private_data`` holding ``jobs``): their jobs by name and
    by uid (MUNGE gives both), and a coordinator's accounts too. A page (``page_details``)
    and its ``total`` (``count_jobs``), each in the list's session (JIT off), for users with
    jobs, users without any (a new account: the worst case of an OR filter over the list's
    order), and coordinators of two accounts."""
    from sqlalchemy.orm import sessionmaker

    from jobenergy.api.access import Visible
    from jobenergy.api.job_filters import JobFilters
    from jobenergy.api.job_lists import count_jobs, page_details
    from jobenergy.api.leaderboards import Window, model_leaderboard, summary

    engine = make_engine(db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def filters_of(kind: str) -> JobFilters:
        n = rng.randrange(len(USERS))
        if kind == "filter user=U, as an admin (no scope)":
            return JobFilters(users=(USERS[n],))
        if kind == "user without jobs":
            return JobFilters(visible=Visible(f"new{n:03d}", 20_000 + n, frozenset()))
        accounts = frozenset({f"acct{rng.randrange(50)}", f"acct{rng.randrange(50)}"})
        return JobFilters(visible=Visible(
            USERS[n], 10_000 + n, accounts if kind == "coordinator of 2 accounts" else frozenset()))

    print("GET /api/v1/jobs?limit=100 in a user's PrivateData scope (name and uid), in-process:")
    try:
        for kind in ("filter user=U, as an admin (no scope)", "user with jobs",
                     "user without jobs", "coordinator of 2 accounts"):
            pages: list[float] = []
            totals: list[float] = []
            for i in range(args.lists + 5):
                filters = filters_of(kind)
                with sessions() as session:
                    session.execute(text("SET LOCAL jit = off"))
                    t0 = time.perf_counter()
                    page_details(session, filters, 100)
                    t1 = time.perf_counter()
                    count_jobs(session, filters)
                    t2 = time.perf_counter()
                    session.commit()
                if i >= 5:
                    pages.append(t1 - t0)
                    totals.append(t2 - t1)
            print(f"  {kind}: page {percentiles(pages)}; total {percentiles(totals)}")
        # private_data = usage: their summary and leaderboard count only the jobs they see.
        print("GET /api/v1/summary and /leaderboards/models in a user's scope (private_data = "
              "usage), all time, live, in-process:")
        for kind in ("user with jobs", "coordinator of 2 accounts"):
            sums: list[float] = []
            boards: list[float] = []
            for i in range(max(5, args.lists // 4) + 2):
                window = Window(visible=filters_of(kind).visible)
                with sessions() as session:
                    t0 = time.perf_counter()
                    summary(session, window, "user")
                    t1 = time.perf_counter()
                    model_leaderboard(session, window, "energy_kwh", True, 100)
                    t2 = time.perf_counter()
                    session.commit()
                if i >= 2:
                    sums.append(t1 - t0)
                    boards.append(t2 - t1)
            print(f"  {kind}: summary by user {percentiles(sums)}; leaderboard "
                  f"{percentiles(boards)}")
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--unfiltered", type=int, default=20,
                        help="GET /api/v1/jobs?limit=100 requests")
    parser.add_argument("--recent-jobs", type=int, default=0,
                        help="also look up jobs among the newest N (default: only uniform)")
    parser.add_argument("--pgdata", type=Path, help="keep the PostgreSQL cluster here")
    parser.add_argument("--rebuild", action="store_true", help="rebuild a kept database")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--seed", type=int, default=42,
                        help="of the random jobs looked up: another seed, other jobs (on a "
                        "kept database, pages an earlier run read may still be cached)")
    parser.add_argument("--live-parts", action="store_true",
                        help="do not materialise job details: every lookup reads the parts "
                        "live (a kept database materialised before stays so)")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    server = KeptPgServer(bindir, args.pgdata) if args.pgdata else pg.PgServer(bindir)
    with server:
        db_url = server.create_database(f"bench_query_{args.jobs}")
        build(db_url, args.jobs, args.rebuild)
        if not args.live_parts:
            materialise_details(db_url)
        if args.build_only:
            return
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        port = pg.free_port()
        code = (
            "import uvicorn\n"
            "from jobenergy.api.app import create_app\n"
            "from jobenergy.collector.settings import ServerSettings\n"
            # No background refresh: it recomputes the leaderboards at start, while the first
            # requests are timed (the details are materialised above).
            f"app = create_app(ServerSettings(db_url={db_url!r}, migrate=False, auth=\"none\", "
            "rollup_interval_s=0))\n"
            f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            meter = Meter(proc.pid, args.pgdata / "data" if args.pgdata else None)
            bench_http(f"http://127.0.0.1:{port}", args, rng, meter)
        finally:
            proc.terminate()
            proc.wait(10)
        bench_split(db_url, args, rng)
        bench_scopes(db_url, args, rng)


if __name__ == "__main__":
    main()
