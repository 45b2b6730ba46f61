"""Series imports keep what lies outside them; concurrent writers cannot double-count."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobenergy.collector.clusters import import_series
from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.ingest import IngestRejected, ingest_batch
from jobenergy.collector.models import FactorPoint, Job
from jobenergy.core.schema import JobSample

H = timedelta(hours=1)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def engine(db_url):
    upgrade(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _steps(engine):
    with Session(engine) as session:
        rows = session.execute(
            select(FactorPoint.start_at, FactorPoint.end_at, FactorPoint.value)
            .where(FactorPoint.cluster == "c1", FactorPoint.factor == "carbon")
            .order_by(FactorPoint.start_at)
        ).all()
    return [((s - T0) / H, (e - T0) / H, v) for s, e, v in rows]


def test_import_inside_a_stored_step_cuts_it_in_two(engine):
    with engine.begin() as conn:
        import_series(
            conn, "c1", "carbon", [(T0, T0 + 12 * H, 100.0), (T0 + 12 * H, T0 + 24 * H, 200.0)]
        )
    with engine.begin() as conn:
        import_series(conn, "c1", "carbon", [(T0 + 5 * H, T0 + 6 * H, 55.0)])
    assert _steps(engine) == [(0, 5, 100.0), (5, 6, 55.0), (6, 12, 100.0), (12, 24, 200.0)]


def test_begin_at_survives_a_batch_without_energy_for_the_job(engine, make_batch):
    first = make_batch(seq=0, jobs={"101": 1})
    with Session(engine) as session, session.begin():
        ingest_batch(session, first)
    later = make_batch(seq=1, jobs={}, start=first.intervals[-1].end)
    # The job is listed in the interval (seen in its cgroup) but got no energy.
    later = later.model_copy(
        update={
            "intervals": [
                i.model_copy(update={"jobs": [JobSample(job_id="101")]}) for i in later.intervals
            ]
        }
    )
    with Session(engine) as session, session.begin():
        ingest_batch(session, later)
    with Session(engine) as session:
        job = session.get(Job, ("c1", "101"))
        assert job.begin_at == first.intervals[0].start


@pytest.mark.postgres
def test_two_agents_with_one_node_name_cannot_both_store_a_span(pg_fresh_url, make_batch):
    upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    try:
        results: list[object] = []
        holder = Session(engine)
        holder.begin()
        ingest_batch(holder, make_batch(cluster="race", boot_id="x", seq=0))  # not committed

        def second() -> None:
            try:
                with Session(engine) as session, session.begin():
                    ingest_batch(session, make_batch(cluster="race", boot_id="y", seq=0))
                results.append("stored")
            except IngestRejected as err:
                results.append(err)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive(), "the second batch must wait for the first one's lock"
        holder.commit()
        holder.close()
        thread.join(timeout=10)
        assert len(results) == 1 and isinstance(results[0], IngestRejected)
    finally:
        engine.dispose()
