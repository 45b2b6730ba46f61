"""energy_interval's monthly partitions on PostgreSQL (revision 0005, collector/partitions.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from jobenergy.cli.main import app
from jobenergy.collector.db import alembic_config, make_engine, upgrade
from jobenergy.collector.ingest import ingest_batch
from jobenergy.collector.intervals import write_intervals_pg
from jobenergy.collector.partitions import (
    DEFAULT_PARTITION,
    ensure_interval_partitions,
    is_partitioned,
    partition_name,
)
from jobenergy.collector.plan import plan_batch

pytestmark = pytest.mark.postgres

MARCH = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
APRIL = datetime(2025, 4, 30, 23, 59, 30, tzinfo=UTC)  # its intervals run into May
JULY = datetime(2024, 7, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
def engine(pg_fresh_url):
    upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    yield engine
    engine.dispose()


def ingest(engine, batch) -> None:
    with Session(engine) as session, session.begin():
        ingest_batch(session, batch)


def placement(engine) -> dict[str, int]:
    """Rows per partition."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM energy_interval GROUP BY 1")
        )
        return dict(rows.all())


def all_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM energy_interval ORDER BY id")).all()


def migrate(url: str, action, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            action(cfg, revision)
    finally:
        engine.dispose()


def test_upgrade_partitions_the_table(engine):
    with engine.connect() as conn:
        assert is_partitioned(conn)
        strategy = conn.execute(
            text(
                "SELECT partstrat FROM pg_partitioned_table "
                "WHERE partrelid = 'energy_interval'::regclass"
            )
        ).scalar_one()
        partitions = set(
            conn.execute(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits "
                    "WHERE inhparent = 'energy_interval'::regclass"
                )
            ).scalars()
        )
    assert strategy == "r"
    now = datetime.now(UTC)
    assert {DEFAULT_PARTITION, partition_name(now.year, now.month)} <= partitions


def test_batches_land_in_their_months_partitions(engine, make_batch):
    with engine.begin() as conn:
        created = ensure_interval_partitions(conn, months_ahead=1, now=MARCH)
    assert created == [partition_name(2025, 3), partition_name(2025, 4)]
    ingest(engine, make_batch(seq=0, start=MARCH, n_intervals=3))
    ingest(engine, make_batch(seq=1, start=APRIL, n_intervals=6))
    # 4 sources, job 101 + unattributed on all but psys: 7 rows per interval
    assert placement(engine) == {
        partition_name(2025, 3): 3 * 7,
        partition_name(2025, 4): 3 * 7,  # 23:59:30, :40, :50
        DEFAULT_PARTITION: 3 * 7,  # May: no partition yet
    }
    # the overlap check reads energy_interval by (cluster, node, start_at) across partitions
    with pytest.raises(Exception, match="overlaps"):
        ingest(engine, make_batch(seq=2, boot_id="boot-2", start=APRIL, n_intervals=6))


def test_ensure_is_idempotent_and_moves_rows_out_of_default(engine, make_batch):
    ingest(engine, make_batch(seq=0, start=JULY, n_intervals=4))
    before = all_rows(engine)
    assert placement(engine) == {DEFAULT_PARTITION: 4 * 7}
    with engine.begin() as conn:
        created = ensure_interval_partitions(conn, months_ahead=2, now=JULY)
    assert created == [partition_name(2024, m) for m in (7, 8, 9)]
    assert placement(engine) == {partition_name(2024, 7): 4 * 7}
    assert all_rows(engine) == before
    with engine.begin() as conn:
        assert ensure_interval_partitions(conn, months_ahead=2, now=JULY) == []
    # new rows of that month now go to its partition; ids go on from the moved ones
    ingest(engine, make_batch(seq=1, start=JULY.replace(day=2), n_intervals=1))
    assert placement(engine) == {partition_name(2024, 7): 5 * 7}
    assert len({row.id for row in all_rows(engine)}) == 5 * 7


def test_downgrade_upgrade_keeps_rows(engine, pg_fresh_url, make_batch):
    ingest(engine, make_batch(seq=0, start=MARCH, n_intervals=2))
    ingest(engine, make_batch(seq=1, start=JULY, n_intervals=2))
    before = all_rows(engine)
    engine.dispose()
    migrate(pg_fresh_url, command.downgrade, "0004_step_energy")
    with engine.connect() as conn:
        assert not is_partitioned(conn)
        assert conn.execute(text(f"SELECT to_regclass('{DEFAULT_PARTITION}')")).scalar() is None
    assert all_rows(engine) == before
    # The identity goes on: the interval rows of a batch, written as ingest writes them (the
    # rest of ingest needs the head schema, not 0004's).
    batch = make_batch(seq=2, start=APRIL, n_intervals=1)
    with engine.begin() as conn:
        write_intervals_pg(conn, [(batch, plan_batch(batch))])
    before = all_rows(engine)
    assert len({row.id for row in before}) == 5 * 7
    engine.dispose()
    migrate(pg_fresh_url, command.upgrade, "head")
    assert all_rows(engine) == before
    # one partition per month holding rows (+ the current and next month): DEFAULT stays empty
    assert DEFAULT_PARTITION not in placement(engine)
    assert set(placement(engine)) == {
        partition_name(2025, 3),
        partition_name(2024, 7),
        partition_name(2025, 4),
    }
    ingest(engine, make_batch(seq=3, start=JULY.replace(day=3), n_intervals=1))
    assert len({row.id for row in all_rows(engine)}) == 6 * 7


def test_db_maintain_command(pg_fresh_url, tmp_path):
    upgrade(pg_fresh_url)
    runner = CliRunner()
    result = runner.invoke(app, ["db", "maintain", "--db", pg_fresh_url, "--months-ahead", "3"])
    assert result.exit_code == 0, result.output
    assert "partitions created" in result.output  # the current+1 exist already: +2, +3
    again = runner.invoke(app, ["db", "maintain", "--db", pg_fresh_url])
    assert again.exit_code == 0 and "nothing to do" in again.output
    sqlite = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade(sqlite)
    assert "nothing to do" in runner.invoke(app, ["db", "maintain", "--db", sqlite]).output
    bad = runner.invoke(app, ["db", "maintain", "--db", "postgresql://nobody@127.0.0.1:1/x"])
    assert bad.exit_code == 2
    assert "jobenergy db maintain: cannot maintain" in bad.output
