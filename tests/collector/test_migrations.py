"""Alembic: the packaged migrations reach head idempotently and match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.models import Base
from jobenergy.collector.partitions import include_name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_fresh_url")


def schema(url: str) -> dict:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
            return {
                "version": version,
                "tables": {
                    name: (
                        sorted(c["name"] for c in insp.get_columns(name)),
                        sorted(i["name"] for i in insp.get_indexes(name)),
                    )
                    for name in insp.get_table_names()
                },
            }
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_noop(fresh_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no alembic.ini around: the config is built in code
    upgrade(fresh_url)
    first = schema(fresh_url)
    assert set(first["tables"]) >= {table.name for table in Base.metadata.sorted_tables}
    assert len(first["version"]) == 1
    upgrade(fresh_url)
    assert schema(fresh_url) == first


def test_migrations_match_models(fresh_url):
    upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as conn:
            # On PostgreSQL energy_interval's partitions are tables of their own that no model
            # describes (the model is the partitioned parent): the comparison leaves them out,
            # as collector/migrations/env.py does for autogenerate.
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": include_name}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_presence_and_board_backfill(fresh_url):
    """Revision 0007 backfills node progress, job presence, phase GPU-seconds and the board."""
    from datetime import UTC, datetime, timedelta

    from alembic.script import ScriptDirectory
    from sqlalchemy import insert, select

    from jobenergy.collector.board import board_parts
    from jobenergy.collector.db import alembic_config
    from jobenergy.collector.models import (
        Job,
        JobBoardPart,
        JobEnergy,
        JobNode,
        JobPhase,
        NodeEnergy,
        NodeProgress,
    )

    script = ScriptDirectory.from_config(alembic_config(fresh_url))
    before = script.get_revision("0007_presence_and_board").down_revision
    upgrade(fresh_url, before)
    t0 = datetime(2026, 11, 23, 10, tzinfo=UTC)
    t1, t2 = t0 + timedelta(seconds=50), t0 + timedelta(seconds=60)
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            for job_id, model in (("1", "m"), ("2", "m")):
                conn.execute(insert(Job.__table__).values(
                    cluster="c1", job_id=job_id, updated_at=t0, model=model, phase="training",
                    energy_uj=100, gpu_s=20.0))
            for job_id, source, last in (("1", "package-0", t1), ("1", "gpu/a", t2),
                                         ("2", "package-0", t1)):
                conn.execute(insert(JobEnergy.__table__).values(
                    cluster="c1", job_id=job_id, node="n1", component="cpu", source=source,
                    energy_uj=50, estimated_uj=0, intervals=5 if last == t1 else 6,
                    covered_s=50.0, first_at=t0, last_at=last, wraps=0, resets=0))
            for source, last in (("package-0", t1), ("gpu/a", t2)):
                conn.execute(insert(NodeEnergy.__table__).values(
                    cluster="c1", node="n1", component="cpu", source=source, measured_uj=1,
                    unattributed_uj=1, intervals=6, first_at=t0, last_at=last))
            for phase, model, energy, samples in (("training", "", 60, 10),
                                                  ("inference", "m2", 30, None)):
                conn.execute(insert(JobPhase.__table__).values(
                    cluster="c1", job_id="1", phase=phase, model=model, energy_uj=energy,
                    intervals=1, samples=samples, records=1))
        upgrade(fresh_url)
        with engine.connect() as conn:
            progress = conn.execute(select(NodeProgress)).one()
            assert (progress.node, progress.last_at, progress.last_sources) == ("n1", t2, 2)
            presence = {(r.job_id, r.node): (r.first_at, r.last_at, r.intervals)
                        for r in conn.execute(select(JobNode))}
            assert presence == {("1", "n1"): (t0, t2, 6), ("2", "n1"): (t0, t1, 5)}
            gpu_s = {r.phase: r.gpu_s for r in conn.execute(select(JobPhase))}
            assert gpu_s == {"training": pytest.approx(12.0), "inference": pytest.approx(6.0)}
            annotated = dict(conn.execute(select(Job.job_id, Job.annotated)).all())
            assert annotated == {"1": True, "2": False}
            parts = {(r.model, r.phase): [r.energy_uj, r.sampled_uj, r.samples, r.gpu_s]
                     for r in conn.execute(select(JobBoardPart))}
        expected = board_parts("m", "training", 100, 20.0, [
            ("training", "", 60, 10, 12.0), ("inference", "m2", 30, None, 6.0)])
        assert parts == expected == {
            ("m", "training"): [70, 60, 10, pytest.approx(14.0)],
            ("m2", "inference"): [30, 0, None, pytest.approx(6.0)],
        }
    finally:
        engine.dispose()


def test_slurm_ids_backfill_from_the_tags(fresh_url):
    """Revision 0014 fills the array / het-job ids of stored jobs from their tags (digits
    only, both of a pair)."""
    from datetime import UTC, datetime

    from alembic.script import ScriptDirectory
    from sqlalchemy import insert, select

    from jobenergy.collector.db import alembic_config
    from jobenergy.collector.models import Job

    script = ScriptDirectory.from_config(alembic_config(fresh_url))
    upgrade(fresh_url, script.get_revision("0014_job_slurm_ids").down_revision)
    tags = {
        "41": {"array_job_id": "40", "array_task_id": "0", "model": "m"},
        "51": {"het_job_id": "50", "het_job_offset": "1"},
        "52": {"het_job_id": "50"},  # no offset: no id of its own
        "53": {"array_job_id": "x1", "array_task_id": "2"},  # a user's tag, not Slurm's
        "54": {"array_job_id": "12345678901", "array_task_id": "1"},  # 11 digits
        "60": None,
    }
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            for job_id, value in tags.items():
                conn.execute(insert(Job.__table__).values(
                    cluster="c1", job_id=job_id, updated_at=datetime(2026, 11, 23, tzinfo=UTC),
                    tags=value))
        upgrade(fresh_url)
        with engine.connect() as conn:
            got = {r.job_id: (r.array_job_id, r.array_task_id, r.het_job_id, r.het_job_offset)
                   for r in conn.execute(select(Job.job_id, Job.array_job_id, Job.array_task_id,
                                                Job.het_job_id, Job.het_job_offset))}
    finally:
        engine.dispose()
    none = (None, None, None, None)
    assert got == {"41": ("40", 0, None, None), "51": (None, None, "50", 1), "52": none,
                   "53": none, "54": none, "60": none}


def test_node_energy_hour_backfill_is_what_ingest_writes(fresh_url, make_batch):
    """Revision 0015 rebuilds node_energy_hour from energy_interval: the same rows ingest
    wrote (rows inside an hour summed in SQL, those crossing an edge split in Python), even
    with a session time zone off UTC by half an hour."""
    from datetime import timedelta

    from alembic import command
    from sqlalchemy import select, text
    from sqlalchemy.orm import Session

    from jobenergy.collector.db import alembic_config
    from jobenergy.collector.ingest import ingest_batch
    from jobenergy.collector.models import NodeEnergyHour

    upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                name = conn.execute(text("SELECT current_database()")).scalar_one()
                conn.execute(text(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Kolkata'"))
                conn.commit()
            engine.dispose()
        start = make_batch().intervals[0].start + timedelta(minutes=50, microseconds=300_007)
        batches = [
            make_batch(seq=0, start=start, interval_s=1500, n_intervals=3,
                       jobs={"101": 3, "102": 1}),
            make_batch(seq=1, start=start + timedelta(seconds=4500), interval_s=1500,
                       n_intervals=2, jobs={"101": 1}, unattributed_weight=0),
            make_batch(node="n2", seq=0, start=start, interval_s=10.0, n_intervals=400),
            make_batch(cluster="c2", seq=0, start=start - timedelta(days=40),
                       interval_s=86_399.5, n_intervals=2, jobs={"7": 1}),
        ]
        for batch in batches:
            with Session(engine) as session, session.begin():
                ingest_batch(session, batch)

        def hours() -> list[tuple]:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(
                    select(NodeEnergyHour).order_by(*NodeEnergyHour.__table__.primary_key))]

        ingested = hours()
        assert len(ingested) > 2 * 4 + 5 * 4  # c2: two days of hours for each component
        with engine.begin() as conn:
            cfg = alembic_config(fresh_url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0014_job_slurm_ids")
        upgrade(fresh_url)
        assert hours() == ingested
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_scope_indexes_replace_an_invalid_one_left_by_a_failed_concurrent_build(pg_fresh_url):
    """0020 builds ix_job_uid_start again when a ``CREATE INDEX CONCURRENTLY`` of that name
    failed (an INVALID index, which ``IF NOT EXISTS`` would keep and the planner ignore)."""
    from datetime import UTC, datetime

    from alembic.script import ScriptDirectory
    from sqlalchemy import insert, text

    from jobenergy.collector.db import alembic_config
    from jobenergy.collector.models import Job

    script = ScriptDirectory.from_config(alembic_config(pg_fresh_url))
    upgrade(pg_fresh_url, script.get_revision("0020_job_scope_indexes").down_revision)
    engine = make_engine(pg_fresh_url, isolation_level="AUTOCOMMIT")
    valid = text("SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                 "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'ix_job_uid_start'")
    try:
        with engine.connect() as conn:
            for job_id in ("1", "2"):
                conn.execute(insert(Job.__table__).values(
                    cluster="c1", job_id=job_id, uid=1000,
                    updated_at=datetime(2026, 12, 3, tzinfo=UTC)))
            with pytest.raises(Exception, match="could not create unique index"):
                conn.execute(text(
                    "CREATE UNIQUE INDEX CONCURRENTLY ix_job_uid_start ON job (uid)"))
            assert conn.execute(valid).one()[0] is False
        upgrade(pg_fresh_url)
        with engine.connect() as conn:
            is_valid, definition = conn.execute(valid).one()
    finally:
        engine.dispose()
    assert is_valid and "(uid, \"user\", start_at DESC NULLS LAST, cluster, job_id)" in definition
