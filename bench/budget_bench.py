"""Budget usage over many jobs in PostgreSQL: what every server recomputes each
``budget_state_interval_s`` (``collector/budget_usage.py``: the state file, ``GET
/api/v1/budgets``, the running-policy actions).

Builds (or reuses, with ``--pgdata``) the job database of ``bench/jobdb.py`` (N jobs, one every
30 s from 2026-01-01, 200 users, 50 accounts, per-job hours with facility energy and CO2e),
stores ``--budgets`` budgets (user, account and account+user scopes; day, week and month
periods; kWh and kg CO2e), then times, at a moment inside the data (``--at-day``, default the
middle of the jobs' span, so a month window holds a month of jobs at 1 M jobs):

* ``statuses``: every budget's used / limit / projection (one GROUP BY per distinct window);
* one month window's usage query alone, with its plan.

Prints p50/p99 of ``--repeat`` runs and the rows each window covers; asserts nothing.

    .venv/bin/python bench/budget_bench.py [--jobs 1000000] [--budgets 300] [--repeat 10]
        [--pgdata DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobdb import KeptPgServer, pg
from query_bench import T0, build  # bench/ is sys.path[0] when run as a script
from sqlalchemy import insert, text

from jobenergy.collector.budget_usage import load, statuses, window_usage
from jobenergy.collector.db import make_engine
from jobenergy.collector.models import Budget
from jobenergy.core.budgets import current_window

UJ_PER_KWH = 3_600_000_000_000


def store_budgets(db_url: str, count: int) -> None:
    """Replace the budgets with ``count`` of every scope, period and unit."""
    scopes = ("user", "account", "account_user")
    periods = ("day", "week", "month")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM budget"))
            rows = []
            stored_at = datetime.now(UTC)
            for i in range(count):
                scope, period = scopes[i % 3], periods[(i // 3) % 3]
                kwh = i % 2 == 0
                rows.append({
                    "cluster": "bench", "scope": scope,
                    "account": f"acct{i % 50}" if scope != "user" else "",
                    "user": f"user{i % 200:03d}" if scope != "account" else "",
                    "period": period, "start_at": None, "end_at": None,
                    "unit": "kwh" if kwh else "kg_co2e",
                    "limit_uj": 500 * UJ_PER_KWH if kwh else None,
                    "limit_mg": None if kwh else 200_000_000,
                    "submit_policy": "deny", "running_policy": "cancel" if i % 4 == 0 else "none",
                    "created_by": "bench", "updated_by": "bench",
                    "created_at": stored_at, "updated_at": stored_at,
                })
            conn.execute(insert(Budget), rows)
    finally:
        engine.dispose()


def timed(fn, repeat: int) -> tuple[float, float, object]:
    samples, result = [], None
    for _ in range(repeat):
        begin = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - begin) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples), p99, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--budgets", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--at-day", type=int,
                        help="day of 2026 'now' is on (default: the middle of the jobs)")
    parser.add_argument("--pgdata", type=Path, help="keep the PostgreSQL cluster here")
    parser.add_argument("--rebuild", action="store_true", help="rebuild a kept database")
    args = parser.parse_args()

    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    server = KeptPgServer(bindir, args.pgdata) if args.pgdata else pg.PgServer(bindir)
    with server:
        db_url = server.create_database(f"bench_query_{args.jobs}")
        build(db_url, args.jobs, args.rebuild)
        store_budgets(db_url, args.budgets)
        # One job every 30 s from T0 (bench/jobdb.py): the middle of them, by default.
        at_day = args.at_day if args.at_day is not None else args.jobs * 30 // 86400 // 2
        now = T0 + timedelta(days=at_day, hours=13, minutes=7)
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:
                budgets = load(conn)
                for period in ("day", "week", "month"):
                    window = current_window(period, now)
                    rows = conn.execute(text(
                        "SELECT count(*) FROM job_energy_hour WHERE cluster = 'bench' "
                        "AND hour_at >= :s AND hour_at < :e"),
                        {"s": window.start, "e": window.end}).scalar()
                    p50, p99, usage = timed(
                        lambda w=window: window_usage(conn, "bench", w), args.repeat)
                    print(f"{period} window {window.start:%Y-%m-%d %H:%M} .. "
                          f"{window.end:%Y-%m-%d %H:%M}: {rows:,} job-hours, "
                          f"{len(usage):,} (user, account) pairs; usage query "
                          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
                p50, p99, out = timed(lambda: statuses(conn, budgets, now), args.repeat)
                print(f"statuses of {len(budgets)} budgets ({args.jobs:,} jobs): "
                      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
                month = current_window("month", now)
                plan = conn.execute(text(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
                    "SELECT j.\"user\", j.account, sum(h.facility_uj), sum(h.co2e_ug) "
                    "FROM job_energy_hour h JOIN job j ON j.cluster = h.cluster "
                    "AND j.job_id = h.job_id WHERE h.cluster = 'bench' AND h.hour_at >= :s "
                    "AND h.hour_at < :e GROUP BY j.\"user\", j.account"),
                    {"s": month.start, "e": month.end}).scalars().all()
                print("plan of the month window's usage query:")
                print("\n".join(f"  {line}" for line in plan))
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
