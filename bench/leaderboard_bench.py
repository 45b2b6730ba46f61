"""Model leaderboard and summary latency over many jobs in PostgreSQL.

Starts a throwaway PostgreSQL (tests/pgserver.py), loads N jobs (default 1 000 000) with the
per-job summary columns that ingest maintains (energy, GPU energy, facility µJ, CO2e µg,
GPU-seconds, samples, model, phase; 40 models, 3 phases, one year of start times) by COPY,
with ``--annotated-share`` of the jobs of the first ``--annotated-models`` models annotated
(two ``job_board_part`` rows each: training with samples, inference without),
VACUUM ANALYZEs (the visibility map lets the covering indexes serve index-only scans), then
times the SQL behind ``GET /api/v1/leaderboards/models`` and ``GET /api/v1/summary``
(``jobenergy.api.leaderboards``) through a SQLAlchemy session, live, and the all-time
leaderboards from their materialisation (``collector/rollups.py``, and how long computing it
takes).
Prints p50/p99 per query shape and the plans of the unfiltered leaderboard and of the summary
by user; asserts nothing.

    .venv/bin/python bench/leaderboard_bench.py [--jobs 1000000] [--repeat 30]
        [--annotated-models 4] [--annotated-share 0.05]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from jobenergy.api.leaderboards import (
    Window,
    _leaderboard_stmt,
    all_time_totals,
    model_leaderboard,
    summary,
    summary_answer,
    window_totals,
)
from jobenergy.collector import rollups
from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.models import Job

# The year before today (whole days): every job ended before the roll-up's first refresh
# (which looks for jobs changed since its last run), and the last 24 h, 7 d and 30 d hold the
# latest jobs, as on a live system.
T0 = (datetime.now(UTC) - timedelta(days=366)).replace(hour=0, minute=0, second=0,
                                                       microsecond=0)
MODELS = [f"model-{m:02d}" for m in range(40)]
PHASES = ["training", "inference", "other"]
USERS = [f"user{u:03d}" for u in range(200)]


def populate(
    db_url: str, n_jobs: int, rng: random.Random, annotated_models: int = 0,
    annotated_share: float = 0.0,
) -> None:
    """COPY ``n_jobs`` job rows with their summary columns (and the board parts of the
    annotated ones); VACUUM ANALYZE."""
    engine = make_engine(db_url)
    columns = (
        'cluster, job_id, "user", account, partition, state, start_at, end_at, '
        "updated_at, begin_at, model, phase, energy_uj, gpu_uj, facility_uj, co2e_ug, "
        "gpu_s, samples, annotated"
    )
    parts = io.StringIO()
    try:
        with engine.begin() as conn:
            dbapi = conn.connection.dbapi_connection
            with dbapi.cursor() as cur, cur.copy(f"COPY job ({columns}) FROM STDIN") as copy:
                chunk = io.StringIO()
                # N jobs spread over the year before today, whatever N: at 10 M jobs a year
                # (27 000 a day), the last 24 h, 7 d and 30 d hold what such a site would hold.
                spacing_s = (datetime.now(UTC) - timedelta(hours=1) - T0).total_seconds() / n_jobs
                for j in range(n_jobs):
                    start = T0 + timedelta(seconds=j * spacing_s)
                    end = start + timedelta(seconds=rng.randint(60, 86_400))
                    has_model = rng.random() < 0.8
                    model = rng.choice(MODELS) if has_model else "\\N"
                    phase = rng.choice(PHASES) if has_model else "\\N"
                    energy = rng.randrange(10**9, 10**13)
                    gpu = energy * 3 // 4
                    samples = rng.randrange(1, 10**7) if rng.random() < 0.5 else "\\N"
                    annotated = (has_model and model in MODELS[:annotated_models]
                                 and rng.random() < annotated_share)
                    gpu_s = rng.randint(0, 8) * (end - start).total_seconds()
                    if annotated:
                        train = energy * 2 // 3
                        parts.write(
                            f"c{j % 4}\t{1_000_000 + j}\t{model}\ttraining\t{train}\t{train}\t"
                            f"{rng.randrange(1, 10**7)}\t{gpu_s * 2 / 3}\n"
                            f"c{j % 4}\t{1_000_000 + j}\t{model}\tinference\t{energy - train}\t0\t"
                            f"\\N\t{gpu_s / 3}\n"
                        )
                    chunk.write(
                        f"c{j % 4}\t{1_000_000 + j}\t{rng.choice(USERS)}\tacct{j % 50}\tgpu\t"
                        f"COMPLETED\t{start.isoformat()}\t{end.isoformat()}\t{end.isoformat()}\t"
                        f"{start.isoformat()}\t{model}\t{phase}\t{energy}\t{gpu}\t"
                        f"{energy * 13 // 10}\t{energy * 13 // 10 * 400 // 3_600_000}\t"
                        f"{gpu_s}\t{samples}\t{'t' if annotated else 'f'}\n"
                    )
                    if j % 100_000 == 99_999:
                        copy.write(chunk.getvalue())
                        chunk = io.StringIO()
                copy.write(chunk.getvalue())
            with dbapi.cursor() as cur, cur.copy(
                "COPY job_board_part (cluster, job_id, model, phase, energy_uj, sampled_uj, "
                "samples, gpu_s) FROM STDIN"
            ) as copy:
                copy.write(parts.getvalue())
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # A snapshot taken before the COPY committed (autovacuum analysing another table)
            # can keep the first VACUUM from marking pages all-visible: repeat until it has.
            for _ in range(10):
                conn.execute(text("VACUUM ANALYZE job"))
                conn.execute(text("VACUUM ANALYZE job_board_part"))
                if conn.execute(text(
                    "SELECT relallvisible >= relpages FROM pg_class WHERE relname = 'job'"
                )).scalar():
                    break
                time.sleep(1)
    finally:
        engine.dispose()


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (n={len(ordered)})"


def timed(repeat: int, run: Callable[[], object]) -> list[float]:
    run()  # warm the cache
    samples = []
    for _ in range(repeat):
        begin = time.perf_counter()
        run()
        samples.append(time.perf_counter() - begin)
    return samples


def print_plan(session: Session, label: str, stmt: Any) -> None:
    """EXPLAIN ANALYZE ``stmt`` in the session's transaction (its SET LOCALs apply)."""
    sql = stmt.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
    session.execute(text("SET LOCAL jit = off"))
    session.execute(text("SET LOCAL work_mem = '64MB'"))
    plan = session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS OFF) {sql}")).scalars().all()
    print(f"plan of {label}:\n  " + "\n  ".join(plan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--annotated-models", type=int, default=4)
    parser.add_argument("--annotated-share", type=float, default=0.05)
    args = parser.parse_args()
    rng = random.Random(42)
    pg = load_pgserver()
    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    with pg.PgServer(bindir) as server:
        db_url = server.create_database("bench_leaderboard")
        upgrade(db_url)
        begin = time.perf_counter()
        populate(db_url, args.jobs, rng, args.annotated_models, args.annotated_share)
        print(f"loaded {args.jobs:,} jobs in {time.perf_counter() - begin:.1f} s")
        engine = make_engine(db_url)
        month = Window(start=T0 + timedelta(days=150), end=T0 + timedelta(days=180))
        shapes = {
            "leaderboard, all jobs": lambda s: model_leaderboard(
                s, Window(), "total_energy_kwh", True, 100
            ),
            "leaderboard ?phase=inference": lambda s: model_leaderboard(
                s, Window(phase="inference"), "median_energy_kwh", True, 100
            ),
            "leaderboard ?phase=training&cluster=c1": lambda s: model_leaderboard(
                s, Window(phase="training", cluster="c1"), "j_per_sample", False, 100
            ),
            "leaderboard ?start=&end= (30 days)": lambda s: model_leaderboard(
                s, month, "kwh_per_gpu_hour", True, 100
            ),
            "summary ?group_by=user": lambda s: summary(s, Window(), "user"),
            "summary ?group_by=account (30 days)": lambda s: summary(s, month, "account"),
        }
        rolled = {
            "leaderboard, all jobs": Window(),
            "leaderboard ?phase=inference": Window(phase="inference"),
            "leaderboard ?phase=training&cluster=c1": Window(phase="training", cluster="c1"),
        }
        try:
            begin = time.perf_counter()
            first = rollups.refresh(engine, all_time_totals)
            assert first is not None and first.computed
            print(f"all-time leaderboard materialised in {time.perf_counter() - begin:.1f} s")
            with engine.begin() as conn:
                conn.execute(text("UPDATE job SET updated_at = now() WHERE job_id IN "
                                  "(SELECT job_id FROM job ORDER BY random() LIMIT 1000)"))
            begin = time.perf_counter()
            again = rollups.refresh(engine, all_time_totals, every=timedelta(0))
            assert again is not None and again.computed
            print(f"recomputed after 1,000 jobs changed in {time.perf_counter() - begin:.1f} s")
            begin = time.perf_counter()
            windows = rollups.refresh(engine, all_time_totals, every=timedelta(0),
                                      window_totals=window_totals)
            assert windows is not None and windows.windows
            print(f"24h/7d/30d leaderboards and the summaries materialised in "
                  f"{time.perf_counter() - begin:.1f} s "
                  f"(all time recomputed too: {windows.computed})")
            for period in rollups.PERIODS:
                rolled[f"leaderboard ?period={period}"] = Window(period=period)
                shapes[f"leaderboard ?period={period}"] = (
                    lambda s, p=period: model_leaderboard(
                        s, Window(period=p), "median_energy_kwh", True, 100, "live"))
            with Session(engine) as session:
                for label, query in shapes.items():
                    samples = timed(args.repeat, lambda q=query: q(session))
                    print(f"{label}: {percentiles(samples)}")
                    session.rollback()
                for label, window in rolled.items():
                    samples = timed(args.repeat, lambda w=window: model_leaderboard(
                        session, w, "median_energy_kwh", True, 100, "rollup"))
                    print(f"{label}, materialised: {percentiles(samples)}")
                    session.rollback()
                for label, window in (("summary ?group_by=user", Window()),
                                      ("summary ?group_by=account&period=30d",
                                       Window(period="30d"))):
                    group_by = label.split("group_by=")[1].split("&")[0]
                    samples = timed(args.repeat, lambda w=window, g=group_by: summary_answer(
                        session, w, g, "rollup"))
                    print(f"{label}, materialised: {percentiles(samples)}")
                    session.rollback()
                session.rollback()
                print_plan(session, "leaderboard, all jobs", _leaderboard_stmt(
                    session, Window(), True))
                session.rollback()
                session.execute(text("SET LOCAL random_page_cost = 1.1"))
                print_plan(session, "summary ?group_by=user", select(
                    Job.user, func.count(), func.sum(Job.energy_uj), func.sum(Job.gpu_uj),
                    func.sum(Job.facility_uj), func.sum(Job.co2e_ug), func.sum(Job.gpu_s),
                ).group_by(Job.user).order_by(func.sum(Job.energy_uj).desc(), Job.user))
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
