"""Retention by dropping energy_interval's monthly partitions (collector/partitions.py,
``jobenergy db maintain --retention-days``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from jobenergy.cli.main import app
from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.ingest import IngestRejected, ingest_batch
from jobenergy.collector.partitions import (
    DEFAULT_PARTITION,
    drop_expired_partitions,
    ensure_interval_partitions,
    partition_name,
)

pytestmark = pytest.mark.postgres

JAN = datetime(2025, 1, 20, 8, 0, tzinfo=UTC)
FEB = datetime(2025, 2, 28, 23, 59, 20, tzinfo=UTC)  # its last 2 intervals start in March
MAR = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
APR = datetime(2025, 4, 14, 9, 0, tzinfo=UTC)
#: 30 days before this is 2025-03-16 10:00: January and February ended before, March did not.
NOW = datetime(2025, 4, 15, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(pg_fresh_url):
    upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    yield engine
    engine.dispose()


def ingest(engine, batch):
    with Session(engine) as session, session.begin():
        return ingest_batch(session, batch)


def placement(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM energy_interval GROUP BY 1")
        )
        return dict(rows.all())


def partitions(engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits "
                    "WHERE inhparent = 'energy_interval'::regclass"
                )
            ).scalars()
        )


def retain(engine, days: int, now: datetime = NOW):
    with engine.begin() as conn:
        return drop_expired_partitions(conn, days, now=now)


def totals(snapshot: dict) -> dict:
    """Every table but the intervals themselves, the record of where they start and the job
    minutes rolled up from them (tests/collector/test_job_minutes.py)."""
    return {name: rows for name, rows in snapshot.items()
            if name not in ("energy_interval", "interval_retention", "job_energy_minute")}


@pytest.fixture
def four_months(engine, pg_fresh_url, make_batch):
    """Partitions January to June 2025, one batch of 6 intervals in each of Jan to Apr (node
    n1, job 101: 7 rows per interval)."""
    with engine.begin() as conn:
        ensure_interval_partitions(conn, months_ahead=5, now=JAN)
    for seq, start in enumerate((JAN, FEB, MAR, APR)):
        ingest(engine, make_batch(seq=seq, start=start, n_intervals=6))
    assert placement(engine) == {
        partition_name(2025, 1): 6 * 7,
        partition_name(2025, 2): 4 * 7,
        partition_name(2025, 3): (2 + 6) * 7,
        partition_name(2025, 4): 6 * 7,
    }
    return engine


def test_drops_months_past_retention_keeps_newer_and_totals(four_months, pg_fresh_url,
                                                             db_snapshot):
    engine = four_months
    before = db_snapshot(pg_fresh_url)
    result = retain(engine, 30)
    assert result.cut == datetime(2025, 3, 16, 10, 0, tzinfo=UTC)
    assert result.dropped == [partition_name(2025, 1), partition_name(2025, 2)]
    assert result.default_rows_before_cut == 0
    assert placement(engine) == {partition_name(2025, 3): 8 * 7, partition_name(2025, 4): 6 * 7}
    left = partitions(engine)
    assert not {partition_name(2025, 1), partition_name(2025, 2)} & left
    assert {partition_name(2025, m) for m in (3, 4, 5, 6)} | {DEFAULT_PARTITION} <= left
    after = db_snapshot(pg_fresh_url)
    # the job, per-node, per-hour, phase, step and progress totals do not change
    assert totals(after) == totals(before)
    assert after["interval_retention"] == [
        ("energy_interval", datetime(2025, 3, 1, tzinfo=UTC)),
        ("job_energy_minute", datetime(2025, 3, 1, tzinfo=UTC))]
    assert before["job_energy_minute"] == [] and after["job_energy_minute"]
    assert after["job_energy"] and after["job_energy_hour"] and after["job"]
    kept = [row for row in before["energy_interval"] if row[6] >= datetime(2025, 3, 1, tzinfo=UTC)]
    assert after["energy_interval"] == kept
    # idempotent
    assert retain(engine, 30).dropped == []
    assert db_snapshot(pg_fresh_url) == after


def test_the_month_goes_once_it_ended_more_than_the_retention_ago(four_months):
    engine = four_months
    # March ended 2025-04-01 00:00; with 14 days it goes after 2025-04-15 00:00, not before
    assert retain(engine, 14, now=datetime(2025, 4, 14, 23, 0, tzinfo=UTC)).dropped == [
        partition_name(2025, 1), partition_name(2025, 2)]
    assert retain(engine, 14, now=datetime(2025, 4, 15, 0, 1, tzinfo=UTC)).dropped == [
        partition_name(2025, 3)]
    assert set(placement(engine)) == {partition_name(2025, 4)}


def test_retention_zero_keeps_everything(four_months, pg_fresh_url, db_snapshot):
    engine = four_months
    before = db_snapshot(pg_fresh_url)
    result = retain(engine, 0, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert result.cut is None and result.dropped == []
    assert db_snapshot(pg_fresh_url) == before


def test_default_partition_rows_are_left_and_counted(engine, make_batch, caplog):
    # no partition for 2024-07: its rows land in DEFAULT
    ingest(engine, make_batch(seq=0, start=datetime(2024, 7, 1, tzinfo=UTC), n_intervals=2))
    with caplog.at_level(logging.WARNING, logger="jobenergy.collector.partitions"):
        result = retain(engine, 30)
    assert result.dropped == []
    assert result.default_rows_before_cut == 2 * 7
    assert placement(engine) == {DEFAULT_PARTITION: 2 * 7}
    assert "14 energy_interval rows in energy_interval_default" in caplog.text


def test_a_partition_not_of_its_month_is_left_alone(engine, caplog):
    name = partition_name(2020, 1)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {name} PARTITION OF energy_interval "
                          "FOR VALUES FROM ('2020-01-15 00:00+00') TO ('2020-02-01 00:00+00')"))
    with caplog.at_level(logging.WARNING, logger="jobenergy.collector.partitions"):
        assert retain(engine, 30).dropped == []
    assert name in partitions(engine)
    assert "not its month's" in caplog.text


def test_not_partitioned_or_sqlite_is_a_no_op(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            assert drop_expired_partitions(conn, 30).cut is None
    finally:
        engine.dispose()


def test_negative_retention_is_refused(engine):
    with pytest.raises(ValueError), engine.begin() as conn:
        drop_expired_partitions(conn, -1)


def test_db_maintain_retention(engine, pg_fresh_url, make_batch, tmp_path):
    with engine.begin() as conn:
        ensure_interval_partitions(conn, months_ahead=1, now=JAN)
    ingest(engine, make_batch(seq=0, start=JAN, n_intervals=3))
    runner = CliRunner()
    keep = runner.invoke(app, ["db", "maintain", "--db", pg_fresh_url, "--retention-days", "0"])
    assert keep.exit_code == 0, keep.output
    assert "dropped" not in keep.output
    assert placement(engine) == {partition_name(2025, 1): 3 * 7}
    result = runner.invoke(app, ["db", "maintain", "--db", pg_fresh_url])  # default: 30 days
    assert result.exit_code == 0, result.output
    assert "partitions dropped (retention 30 days" in result.output
    assert f"{partition_name(2025, 1)}, {partition_name(2025, 2)}" in result.output
    assert placement(engine) == {}
    again = runner.invoke(app, ["db", "maintain", "--db", pg_fresh_url, "--retention-days", "30"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    bad = runner.invoke(app, ["db", "maintain", "--db", pg_fresh_url, "--retention-days", "-1"])
    assert bad.exit_code == 2
    sqlite = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade(sqlite)
    out = runner.invoke(app, ["db", "maintain", "--db", sqlite, "--retention-days", "1"]).output
    assert "nothing to do on SQLite" in out


def test_a_retry_of_a_dropped_span_is_still_a_duplicate(four_months, make_batch):
    retain(four_months, 30)
    # ingested_batch is kept: the same key is acknowledged, nothing counted twice
    assert ingest(four_months, make_batch(seq=0, start=JAN, n_intervals=6)).duplicate


def test_a_dropped_span_resent_under_another_key_is_refused(four_months, make_batch):
    """Once its partition is dropped, a span cannot be checked against what was stored: a
    batch reaching back before the retained intervals is refused, not counted twice."""
    retain(four_months, 30)
    with pytest.raises(IngestRejected, match="before the retained raw intervals"):
        ingest(four_months, make_batch(seq=0, boot_id="boot-2", start=JAN, n_intervals=6))


def test_series_of_a_dropped_span_answer_from_hours(four_months, pg_fresh_url, make_batch,
                                                    make_client):
    """After retention dropped January and February, the cluster's and the node's series
    over them still answer, from node_energy_hour, with what the raw intervals gave."""
    from jobenergy.collector.settings import ServerSettings

    client = make_client(ServerSettings(db_url=pg_fresh_url, auth="none", migrate=False,
                                        pue=1.0, carbon_intensity_g_per_kwh=None))

    def series(path: str, start: datetime, end: datetime, **params: str) -> dict:
        response = client.get(path, params={"start": start.isoformat(),
                                            "end": end.isoformat(), **params})
        assert response.status_code == 200, response.text
        return response.json()

    def measured(batch, components=("cpu", "dram", "gpu")) -> int:
        return sum(s.measured_uj for iv in batch.intervals for s in iv.sources
                   if s.component in components)

    jan, feb = (make_batch(seq=0, start=JAN, n_intervals=6),
                make_batch(seq=1, start=FEB, n_intervals=6))
    cluster, node = "/api/v1/clusters/c1/series", "/api/v1/nodes/n1/series"
    hour = (JAN.replace(minute=0), JAN.replace(minute=0) + timedelta(hours=1))
    feb_hour = FEB.replace(minute=0, second=0)
    edge = (feb_hour, feb_hour + timedelta(hours=2))
    raw = series(cluster, *hour)
    assert raw["resolution"] == "interval" and raw["energy_uj"] == measured(jan)
    hourly = {span: (series(cluster, *span, step="1h"), series(node, *span, step="1h"))
              for span in (hour, edge)}
    assert retain(four_months, 30).dropped == [partition_name(2025, 1),
                                               partition_name(2025, 2)]
    for span, (cluster_before, node_before) in hourly.items():
        for path, before in ((cluster, cluster_before), (node, node_before)):
            after = series(path, *span)  # default step: raised to whole hours
            assert after["resolution"] == "hour" and after["retained_from"] == (
                "2025-03-01T00:00:00Z")
            assert {k: v for k, v in after.items() if k not in ("requested_step_s",
                                                                 "retained_from")} == {
                k: v for k, v in before.items() if k not in ("requested_step_s",
                                                             "retained_from")}
    assert series(cluster, *hour)["energy_uj"] == measured(jan)
    # February 28 23:00 to March 1 01:00: the last 40 s of February and 20 s of March.
    assert series(cluster, *edge)["bucket_energy_uj"] == [
        measured(feb) - sum(s.measured_uj for iv in feb.intervals[4:] for s in iv.sources
                            if s.component != "psys"),
        sum(s.measured_uj for iv in feb.intervals[4:] for s in iv.sources
            if s.component != "psys")]
    # The whole span, two months back: 54 days, hourly.
    whole = series(cluster, datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 3, 10, tzinfo=UTC))
    assert whole["resolution"] == "hour" and whole["energy_uj"] == measured(jan) + measured(feb)
    node_lines = {(line["kind"], line["component"]): line["energy_uj"]
                  for line in series(node, datetime(2025, 1, 15, tzinfo=UTC),
                                     datetime(2025, 3, 10, tzinfo=UTC))["lines"]}
    assert node_lines[("measured", "psys")] == node_lines[("unattributed", "psys")] > 0


def _received(engine, seq: int, at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE ingested_batch SET received_at = :at WHERE seq = :seq"),
                     {"at": at, "seq": seq})


def _keys(engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT seq FROM ingested_batch")).scalars())


def test_batch_keys_older_than_the_retained_intervals_are_pruned_never_recounted(
        four_months, pg_fresh_url, make_batch, db_snapshot):
    """Keys of batches received over a day before the retained intervals go (in chunks); a
    retry of a pruned batch is refused, as overlapping or too old, never counted again."""
    from jobenergy.collector.batch_keys import KEY_MARGIN, prune_batch_keys

    engine = four_months
    assert prune_batch_keys(engine) == (0, None)  # nothing retained yet: nothing to prune
    retain(engine, 30)  # the raw intervals now start on 1 March
    kept_from = datetime(2025, 3, 1, tzinfo=UTC)
    _received(engine, 0, JAN + timedelta(hours=1))
    _received(engine, 1, kept_from - KEY_MARGIN + timedelta(hours=12))  # within the margin
    _received(engine, 2, kept_from - KEY_MARGIN - timedelta(seconds=1))
    before = db_snapshot(pg_fresh_url)
    assert prune_batch_keys(engine, chunk_rows=1) == (2, kept_from - KEY_MARGIN)
    assert _keys(engine) == [1, 3]
    assert prune_batch_keys(engine) == (0, kept_from - KEY_MARGIN)
    # January's retry reaches back before the retained intervals; March's (seq 2) overlaps
    # what is stored; February's key is kept: a duplicate as before.
    with pytest.raises(IngestRejected, match="before the retained raw intervals"):
        ingest(engine, make_batch(seq=0, start=JAN, n_intervals=6))
    with pytest.raises(IngestRejected, match="overlaps energy already stored"):
        ingest(engine, make_batch(seq=2, start=MAR, n_intervals=6))
    assert ingest(engine, make_batch(seq=1, start=FEB, n_intervals=6)).duplicate
    after = db_snapshot(pg_fresh_url)
    assert {k: v for k, v in after.items() if k != "ingested_batch"} == {
        k: v for k, v in before.items() if k != "ingested_batch"}


def test_db_maintain_prunes_old_batch_keys(engine, pg_fresh_url, make_batch):
    with engine.begin() as conn:
        ensure_interval_partitions(conn, months_ahead=1, now=JAN)
    ingest(engine, make_batch(seq=0, start=JAN, n_intervals=3))
    ingest(engine, make_batch(seq=1, start=JAN + timedelta(minutes=5), n_intervals=3))
    _received(engine, 0, JAN + timedelta(hours=1))
    result = CliRunner().invoke(app, ["db", "maintain", "--db", pg_fresh_url])
    assert result.exit_code == 0, result.output
    assert "batch keys pruned: 1 (batches received before 2025-02-28 00:00 UTC" in (
        result.output)
    assert _keys(engine) == [1]
