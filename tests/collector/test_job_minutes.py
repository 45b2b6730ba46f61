"""Per-job minute series kept past retention (collector/job_minutes.py): ``db maintain``
rolls a month's raw intervals up into ``job_energy_minute`` before dropping its partition,
and the job series reads the minutes before ``retained_from``, the raw intervals after."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from jobenergy.cli.main import app
from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.ingest import ingest_batch
from jobenergy.collector.partitions import (
    drop_expired_partitions,
    ensure_interval_partitions,
    partition_name,
    roll_up_expired,
)
from jobenergy.core.split import split_over_periods

pytestmark = pytest.mark.postgres

JAN = datetime(2025, 1, 20, 8, 0, 7, tzinfo=UTC)
FEB = datetime(2025, 2, 28, 23, 59, 20, tzinfo=UTC)  # 25-s intervals: one crosses into March
MAR = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
#: 30 days before: 2025-03-16 10:00: January and February ended before, March did not.
NOW = datetime(2025, 4, 15, 10, 0, tzinfo=UTC)
SOURCES = (("cpu", "package-0"), ("dram", "package-0/dram"), ("gpu", "gpu/GPU-a"),
           ("gpu", "gpu/GPU-b"), ("psys", "psys"))
JOBS = {"101": 1, "102": 3}
MINUTE = timedelta(minutes=1)


@pytest.fixture
def engine(pg_fresh_url, make_batch):
    """January to March 2025 of node n1, jobs 101 and 102 sharing it, intervals of 25 s
    (most cross a minute edge) and, in January, one of 150 s (three minute edges)."""
    upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    with engine.begin() as conn:
        ensure_interval_partitions(conn, months_ahead=3, now=JAN)
    batches = [
        make_batch(seq=0, start=JAN, n_intervals=9, interval_s=25, jobs=JOBS, sources=SOURCES),
        make_batch(seq=1, start=JAN + timedelta(seconds=9 * 25), n_intervals=1, interval_s=150,
                   jobs=JOBS, sources=SOURCES),
        make_batch(seq=2, start=FEB, n_intervals=5, interval_s=25, jobs=JOBS, sources=SOURCES,
                   estimated=True),
        make_batch(seq=3, start=MAR, n_intervals=4, interval_s=25, jobs=JOBS, sources=SOURCES),
    ]
    for batch in batches:
        with Session(engine) as session, session.begin():
            ingest_batch(session, batch)
    yield engine
    engine.dispose()


def rows(engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def minutes(engine) -> list[tuple]:
    return rows(engine, "SELECT cluster, job_id, node, component, source, minute_at, energy_uj, "
                        "estimated FROM job_energy_minute ORDER BY 1, 2, 3, 4, 5, 6")


def line_totals(engine, sql: str) -> dict[tuple, int]:
    return {tuple(row[:-1]): int(row[-1]) for row in rows(engine, sql)}


def assert_conserved(engine) -> None:
    """Per job line: its minutes plus the raw intervals not rolled up == job_energy."""
    through = rows(engine, "SELECT kept_from FROM interval_retention "
                           "WHERE name = 'job_energy_minute'")
    cut = through[0][0].isoformat() if through else "-infinity"
    got: dict[tuple, int] = defaultdict(int)
    for table, where in (("job_energy_minute", "true"),
                         ("energy_interval", f"job_id IS NOT NULL AND start_at >= '{cut}'")):
        for key, energy in line_totals(engine, f"SELECT job_id, node, component, source, "
                                               f"SUM(energy_uj) FROM {table} WHERE {where} "
                                               "GROUP BY 1, 2, 3, 4").items():
            got[key] += energy
    assert dict(got) == line_totals(engine, "SELECT job_id, node, component, source, energy_uj "
                                            "FROM job_energy")


def expected_minutes(engine, before: datetime) -> list[tuple]:
    """What the roll-up must write for the raw rows starting before ``before``: each row
    split over its minutes by largest remainder on its own, then summed."""
    acc: dict[tuple, list] = defaultdict(lambda: [0, False])
    for c, j, n, comp, s, start, end, energy, est in rows(
            engine, "SELECT cluster, job_id, node, component, source, start_at, end_at, "
                    f"energy_uj, estimated FROM energy_interval WHERE job_id IS NOT NULL "
                    f"AND start_at < '{before.isoformat()}'"):
        for minute, part in split_over_periods(start, end, energy, MINUTE).items():
            slot = acc[(c, j, n, comp, s, minute)]
            slot[0] += part
            slot[1] = slot[1] or est
    return sorted((*key, energy, est) for key, (energy, est) in acc.items())


def test_roll_up_splits_crossing_rows_exactly_and_conserves(engine):
    march = datetime(2025, 3, 1, tzinfo=UTC)
    want = expected_minutes(engine, march)
    crossing = rows(engine, "SELECT count(*) FROM energy_interval WHERE job_id IS NOT NULL AND "
                            "date_trunc('minute', start_at) + interval '1 minute' < end_at")
    assert crossing[0][0] > 10  # the split path is exercised, multi-minute rows included
    with engine.begin() as conn:
        result = drop_expired_partitions(conn, 30, now=NOW)
    assert result.dropped == [partition_name(2025, 1), partition_name(2025, 2)]
    assert result.minute_rows >= len(want)  # upserts: a minute may be added to twice
    got = minutes(engine)
    assert got == want
    # The last February interval's tail is March 00:00's minute; February's were estimated.
    assert any(row[5] == march and row[7] for row in got)
    assert_conserved(engine)


def test_maintain_twice_and_a_crash_after_the_roll_up_count_once(engine, pg_fresh_url):
    want = expected_minutes(engine, datetime(2025, 3, 1, tzinfo=UTC))
    # The roll-up alone, committed, then the "crash": the partitions are still there.
    with engine.begin() as conn:
        rolled, written = roll_up_expired(conn, 30, now=NOW)
    assert rolled == [partition_name(2025, 1), partition_name(2025, 2)] and written >= len(want)
    assert minutes(engine) == want
    assert_conserved(engine)
    with engine.begin() as conn:  # again: nothing more
        assert roll_up_expired(conn, 30, now=NOW) == ([], 0)
    # maintain drops them without adding them again, and a second run changes nothing.
    for _ in range(2):
        with engine.begin() as conn:
            result = drop_expired_partitions(conn, 30, now=NOW)
        assert result.minute_rows == 0
        assert minutes(engine) == want
        assert_conserved(engine)
    assert result.dropped == []
    # The command, today: March goes too, rolled up once.
    out = CliRunner().invoke(app, ["db", "maintain", "--db", pg_fresh_url])
    assert out.exit_code == 0, out.output
    assert "job minute series kept for them" in out.output
    assert rows(engine, "SELECT count(*) FROM energy_interval") == [(0,)]
    assert minutes(engine) == expected_minutes_all(want, engine)
    assert_conserved(engine)


def expected_minutes_all(before_march: list[tuple], engine) -> list[tuple]:
    """Every job row is in the minutes now: their sums per line are job_energy."""
    got = line_totals(engine, "SELECT job_id, node, component, source, SUM(energy_uj) "
                              "FROM job_energy_minute GROUP BY 1, 2, 3, 4")
    assert got == line_totals(engine, "SELECT job_id, node, component, source, energy_uj "
                                      "FROM job_energy")
    assert set(before_march) - set(minutes(engine)) <= {
        row for row in before_march if row[5] == datetime(2025, 3, 1, tzinfo=UTC)}
    return minutes(engine)


def test_job_series_reads_minutes_before_retention_and_raw_after(engine, pg_fresh_url,
                                                                 make_client):
    from jobenergy.collector.settings import ServerSettings

    client = make_client(ServerSettings(db_url=pg_fresh_url, auth="none", migrate=False,
                                        pue=1.0, carbon_intensity_g_per_kwh=None))

    def series(start: datetime, end: datetime, job: str = "101", **params: str) -> dict:
        response = client.get(f"/api/v1/jobs/{job}/series",
                              params={"start": start.isoformat(), "end": end.isoformat(),
                                      **params})
        assert response.status_code == 200, response.text
        return response.json()

    def by_line(answer: dict) -> dict[tuple, tuple]:
        return {(line["node"], line["component"], line["source"]):
                (line["energy_uj"], line["bucket_energy_uj"]) for line in answer["lines"]}

    windows = {
        "january": (JAN - timedelta(minutes=2), JAN + timedelta(minutes=10)),
        # across `through` (March 1): February's minutes, then March's raw intervals
        "month edge": (FEB - timedelta(seconds=80), FEB + timedelta(minutes=3)),
    }
    before = {(name, job): series(*span, job=job, step="60")
              for name, span in windows.items() for job in JOBS}
    jan_raw = line_totals(engine, "SELECT component, SUM(energy_uj) FROM energy_interval "
                                  "WHERE job_id = '101' AND start_at < '2025-02-01' GROUP BY 1")
    with engine.begin() as conn:
        drop_expired_partitions(conn, 30, now=NOW)
    for (name, job), raw in before.items():
        assert raw["resolution"] == "interval"
        after = series(*windows[name], job=job, step="60")
        assert after["resolution"] == "minute" and after["retained_from"] == (
            "2025-03-01T00:00:00Z")
        # Bucket by bucket the same as the raw intervals gave, per node, component, source.
        assert by_line(after) == by_line(raw), name
        assert after["t"] == raw["t"] and after["energy_uj"] == raw["energy_uj"]
        # A finer step is raised to a minute there.
        fine = series(*windows[name], job=job, step="10")
        assert fine["step_s"] == 60 and fine["step_raised"]
    # The month of January integrates to the job's energy there, per component.
    jan = series(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
    assert jan["resolution"] == "hour"  # a window over 8 days stays hourly
    week = series(datetime(2025, 1, 18, tzinfo=UTC), datetime(2025, 1, 25, tzinfo=UTC))
    assert week["resolution"] == "minute" and week["step_s"] % 60 == 0
    per_component: dict[tuple, int] = defaultdict(int)
    for line in week["lines"]:
        per_component[(line["component"],)] += line["energy_uj"]
    assert dict(per_component) == jan_raw
    assert set(jan_raw) == {("cpu",), ("dram",), ("gpu",)}
    # The job's whole life (Jan to Mar, over 8 days): hourly, still the job's energy.
    whole = client.get("/api/v1/jobs/101/series").json()
    job = client.get("/api/v1/jobs/101").json()
    assert whole["resolution"] == "hour" and whole["energy_uj"] == job["energy_uj"]

