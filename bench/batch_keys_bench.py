"""Pruning old batch keys (``jobenergy db maintain``, ``collector/batch_keys.py``) in PostgreSQL.

Starts a throwaway PostgreSQL (tests/pgserver.py), loads ``--keys`` batch keys received over
``--days`` days (evenly; ``--nodes`` nodes, one key per push) by SQL ``generate_series``,
records that the raw intervals are kept from ``--kept-days`` ago, then times one prune (keys
received over a day before that go, in chunks of 50,000) and prints rows/s, the table's and
its indexes' size before and after, and what one ingest-sized key insert costs against the
extra ``received_at`` index (p50 of ``--inserts`` single-row inserts). Asserts nothing.

    .venv/bin/python bench/batch_keys_bench.py [--keys 2000000] [--days 60] [--kept-days 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from pgload import load_pgserver  # bench/ is sys.path[0] when run as a script
from sqlalchemy import text

from jobenergy.collector.batch_keys import KEY_MARGIN, prune_batch_keys
from jobenergy.collector.db import make_engine, upgrade


def _size_mb(conn, table: str) -> tuple[float, float]:
    row = conn.execute(text(
        "SELECT pg_table_size(:t), pg_indexes_size(:t)"), {"t": table}).one()
    return row[0] / 2**20, row[1] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--kept-days", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--inserts", type=int, default=2000)
    args = parser.parse_args()
    pg = load_pgserver()
    bindir = pg.find_pg_bin()
    if bindir is None:
        sys.exit(pg.NOT_FOUND_MESSAGE)
    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(days=args.days)
    kept_from = now - timedelta(days=args.kept_days)
    with pg.PgServer(bindir) as server:
        db_url = server.create_database("bench_batch_keys")
        upgrade(db_url)
        engine = make_engine(db_url)
        step_s = args.days * 86400 / args.keys
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO ingested_batch (cluster, node, boot_id, seq, received_at, "
                "agent_version, intervals, records, content_sha256) "
                "SELECT 'c1', 'n' || (i % :nodes), 'boot', i / :nodes, "
                ":first + make_interval(secs => i * :step), '1', 1, 140, md5(i::text) || "
                "md5(i::text) FROM generate_series(0, :keys - 1) AS i"),
                {"nodes": args.nodes, "first": first, "step": step_s, "keys": args.keys})
            conn.execute(text(
                "INSERT INTO interval_retention (name, kept_from) "
                "VALUES ('energy_interval', :kept)"), {"kept": kept_from})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE ingested_batch"))
            before = _size_mb(conn, "ingested_batch")
        print(f"loaded {args.keys:,} keys received over {args.days} days ({args.nodes} nodes) "
              f"in {time.perf_counter() - began:.1f} s; table {before[0]:.0f} MB, indexes "
              f"{before[1]:.0f} MB ({(before[0] + before[1]) * 2**20 / args.keys:.0f} B/key)")
        # One key insert as ingest does it (its own transaction), with the received_at index.
        took = []
        for k in range(args.inserts):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO ingested_batch (cluster, node, boot_id, seq, received_at, "
                    "intervals, records) VALUES ('c1', 'bench', 'b', :k, now(), 1, 1)"),
                    {"k": k})
            took.append(time.perf_counter() - t0)
        print(f"one key insert (a transaction each): p50 {statistics.median(took) * 1e3:.2f} ms")
        t0 = time.perf_counter()
        pruned, cut = prune_batch_keys(engine)
        seconds = time.perf_counter() - t0
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ingested_batch"))
            after = _size_mb(conn, "ingested_batch")
            left = conn.execute(text("SELECT count(*) FROM ingested_batch")).scalar_one()
        expected = (kept_from - KEY_MARGIN - first).total_seconds() / step_s
        print(f"pruned {pruned:,} keys (expected about {expected:,.0f}) received before "
              f"{cut:%Y-%m-%d %H:%M} in {seconds:.1f} s = {pruned / seconds:,.0f} keys/s; "
              f"{left:,} left; "
              f"after VACUUM: table {after[0]:.0f} MB, indexes {after[1]:.0f} MB (space reused "
              "by new keys, not returned to the OS)")
        engine.dispose()


if __name__ == "__main__":
    main()
