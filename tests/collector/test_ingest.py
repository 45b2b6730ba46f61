"""ingest_batch against SQLite and PostgreSQL: exact µJ, idempotence, conservation."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from jobenergy.collector.db import make_engine
from jobenergy.collector.ingest import IngestRejected, ingest_batch
from jobenergy.collector.models import EnergyInterval, IngestedBatch, Job, JobEnergy, NodeEnergy
from jobenergy.core.schema import Batch


def expected_job_totals(*batches: Batch) -> Counter:
    """Sum every job share of the batches per (job, node, component, source)."""
    totals: Counter = Counter()
    for batch in batches:
        for interval in batch.intervals:
            for src in interval.sources:
                for job_id, energy_uj in src.jobs_uj.items():
                    totals[(job_id, batch.node, src.component, src.source)] += energy_uj
    return totals


def stored_job_totals(session: Session, cluster: str = "c1") -> Counter:
    rows = session.execute(
        select(JobEnergy.job_id, JobEnergy.node, JobEnergy.component, JobEnergy.source,
               JobEnergy.energy_uj).where(JobEnergy.cluster == cluster)
    )
    return Counter({tuple(row[:4]): row[4] for row in rows})


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def ingest(engine, batch):
    with Session(engine) as session, session.begin():
        return ingest_batch(session, batch)


def test_ingest_stores_exact_microjoules(engine, make_batch):
    batch = make_batch(jobs={"101": 3, "102": 1}, n_intervals=5)
    result = ingest(engine, batch)
    assert result.duplicate is False
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(batch)
        n_rows = session.scalar(select(func.count()).select_from(EnergyInterval))
        stored_sum = session.scalar(select(func.sum(EnergyInterval.energy_uj)))
        measured = sum(s.measured_uj for iv in batch.intervals for s in iv.sources)
        assert result.records == n_rows > 0
        assert int(stored_sum) == measured
        node = {
            (r.component, r.source): (r.measured_uj, r.unattributed_uj, r.intervals)
            for r in session.scalars(select(NodeEnergy))
        }
        for src in batch.intervals[0].sources:
            total = sum(
                s.measured_uj for iv in batch.intervals for s in iv.sources
                if s.source == src.source
            )
            unattributed = sum(
                s.unattributed_uj for iv in batch.intervals for s in iv.sources
                if s.source == src.source
            )
            assert node[(src.component, src.source)] == (total, unattributed, 5)


def test_job_energy_metadata(engine, make_batch):
    batch = make_batch(n_intervals=4, interval_s=15.0, estimated=True, wraps=1, resets=2)
    ingest(engine, batch)
    with Session(engine) as session:
        rows = {r.component: r for r in session.scalars(select(JobEnergy))}
        assert set(rows) == {"cpu", "dram", "gpu"}  # psys is never attributed
        gpu, cpu = rows["gpu"], rows["cpu"]
        assert gpu.intervals == 4
        assert gpu.covered_s == pytest.approx(60.0)
        assert gpu.first_at == batch.intervals[0].start
        assert gpu.last_at == batch.intervals[-1].end
        assert gpu.device_name == "NVIDIA H100 80GB HBM3"
        assert gpu.estimated_uj == gpu.energy_uj > 0
        assert cpu.estimated_uj == 0
        assert (cpu.wraps, gpu.resets) == (4, 8)
        job = session.get(Job, ("c1", "101"))
        assert job is not None and job.uid == 1000 and job.start_at is None


def test_duplicate_batch_is_acknowledged_and_not_stored_twice(engine, make_batch, db_url,
                                                              db_snapshot):
    batch = make_batch()
    first = ingest(engine, batch)
    before = db_snapshot(db_url)
    again = ingest(engine, batch)
    assert first.duplicate is False and first.records > 0
    assert again.duplicate is True and again.records == 0
    assert db_snapshot(db_url) == before


def test_batches_accumulate_in_any_order(engine, make_batch):
    early = make_batch(seq=0)
    late = make_batch(seq=1, start=early.intervals[-1].end)
    other_node = make_batch(node="n2", seq=0)
    for batch in (late, other_node, early):
        ingest(engine, batch)
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(early, late, other_node)
        row = session.get(JobEnergy, ("c1", "101", "n1", "cpu", "package-0"))
        assert row.first_at == early.intervals[0].start
        assert row.last_at == late.intervals[-1].end
        assert row.intervals == 6
        assert session.scalar(select(func.count()).select_from(IngestedBatch)) == 3


def test_new_boot_id_is_a_new_batch(engine, make_batch):
    ingest(engine, make_batch(boot_id="a", seq=0))
    result = ingest(engine, make_batch(boot_id="b", seq=0, start=make_batch().intervals[-1].end))
    assert result.duplicate is False


# Day-long intervals (the schema's longest) at 49 kW: ~4.23e15 µJ each, all to job 101.
HUGE = dict(interval_s=86_400, power_w=49_000.0, unattributed_weight=0,
            sources=[("cpu", "package-0")])


def test_total_past_bigint_rolls_back_everything(engine, make_batch, db_url, db_snapshot):
    ingest(engine, make_batch(seq=0, n_intervals=2_000, **HUGE))
    before = db_snapshot(db_url)
    later = before["job_energy"][0]
    assert later[5] > 8 * 10**18  # energy_uj column: close to the BIGINT limit
    second = make_batch(seq=1, n_intervals=200, start=make_batch().intervals[0].start
                        + timedelta(seconds=2_000 * 86_400), **HUGE)
    # The claim and the interval rows are written before the job total overflows: the
    # database refuses the total and the whole transaction is rolled back.
    with pytest.raises(DBAPIError):
        ingest(engine, second)
    assert db_snapshot(db_url) == before


def test_batch_sum_past_bigint_is_rejected(engine, make_batch):
    with pytest.raises(IngestRejected, match="energy total"):
        ingest(engine, make_batch(n_intervals=2_200, **HUGE))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    weights=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=5),
    unattributed_weight=st.integers(min_value=0, max_value=1000),
    power_w=st.floats(min_value=0.0, max_value=5_000.0),
    n_intervals=st.integers(min_value=1, max_value=6),
    n_batches=st.integers(min_value=1, max_value=3),
)
def test_totals_equal_sum_of_ingested_shares(engine, make_batch, weights, unattributed_weight,
                                             power_w, n_intervals, n_batches):
    # Each example writes to its own cluster: the database is shared across examples.
    cluster = f"h{abs(hash((tuple(weights), unattributed_weight, power_w, n_intervals)))}"
    with Session(engine) as session:
        if session.scalar(select(func.count()).where(IngestedBatch.cluster == cluster)):
            return  # this exact example already ran
    jobs = {str(1000 + i): w for i, w in enumerate(weights)}
    batches = []
    start = make_batch().intervals[0].start
    for seq in range(n_batches):
        batch = make_batch(cluster=cluster, seq=seq, jobs=jobs, power_w=power_w,
                           unattributed_weight=unattributed_weight, n_intervals=n_intervals,
                           start=start + timedelta(seconds=100 * seq))
        batches.append(batch)
        ingest(engine, batch)
    ingest(engine, batches[0])  # a retry changes nothing
    with Session(engine) as session:
        assert stored_job_totals(session, cluster) == expected_job_totals(*batches)
        for ne in session.scalars(select(NodeEnergy).where(NodeEnergy.cluster == cluster)):
            attributed = session.scalar(
                select(func.coalesce(func.sum(JobEnergy.energy_uj), 0)).where(
                    JobEnergy.cluster == cluster, JobEnergy.source == ne.source
                )
            )
            assert ne.measured_uj == ne.unattributed_uj + int(attributed)


def test_same_span_under_another_key_is_refused(engine, make_batch):
    ingest(engine, make_batch(seq=0))
    with pytest.raises(IngestRejected, match="overlaps energy already stored"):
        ingest(engine, make_batch(seq=1))  # same intervals, new seq: would count twice
    with pytest.raises(IngestRejected, match="overlaps"):
        ingest(engine, make_batch(boot_id="other", seq=0))
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(make_batch(seq=0))
