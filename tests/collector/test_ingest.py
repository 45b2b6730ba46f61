"""ingest_batch against SQLite and PostgreSQL: exact µJ, idempotence, conservation."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from jobenergy.collector.db import make_engine
from jobenergy.collector.ingest import IngestRejected, ingest_batch
from jobenergy.collector.models import (
    EnergyInterval,
    IngestedBatch,
    Job,
    JobEnergy,
    JobEnergyHour,
    JobStepEnergy,
    NodeEnergy,
    NodeEnergyHour,
)
from jobenergy.core.carbon import split_over_hours
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
        # The node's hours add up to its totals per component.
        assert stored_node_hour_sums(session, cluster) == node_totals_per_component(
            session, cluster)


def test_same_span_under_another_key_is_refused(engine, make_batch):
    ingest(engine, make_batch(seq=0))
    with pytest.raises(IngestRejected, match="overlaps energy already stored"):
        ingest(engine, make_batch(seq=1))  # same intervals, new seq: would count twice
    with pytest.raises(IngestRejected, match="overlaps"):
        ingest(engine, make_batch(boot_id="other", seq=0))
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(make_batch(seq=0))


def test_overlap_is_caught_in_order_out_of_order_and_in_a_hole(engine, make_batch):
    """The node's high-water marks answer for a batch after (or before) everything stored; one
    reaching into the stored span is checked row by row: a hole is accepted, an overlap is
    refused wherever it is."""
    t0 = make_batch().intervals[0].start

    def at(seq: int, offset_s: float, n: int = 3) -> Batch:
        return make_batch(seq=seq, start=t0 + timedelta(seconds=offset_s), n_intervals=n)

    stored = [at(0, 100), at(1, 130), at(2, 0), at(3, 40)]  # after, before, in the hole
    for batch in stored:
        ingest(engine, batch)
    for seq, offset_s in ((10, 110), (11, 155), (12, 45), (13, 25), (14, -5), (15, 95)):
        with pytest.raises(IngestRejected, match="overlaps energy already stored"):
            ingest(engine, at(seq, offset_s))
    ingest(engine, at(20, 160))  # touching the end: next in time
    ingest(engine, at(21, 70, n=3))  # exactly filling the rest of the hole [70, 100)
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(
            *stored, at(20, 160), at(21, 70))


# -- per-step energy ------------------------------------------------------------------------


def with_steps(batch: Batch, steps_by_interval: list[dict[str, dict[str, int]]]) -> Batch:
    """Return ``batch`` with ``step_cpu_us`` set per interval and job (validated again)."""
    data = batch.model_dump(mode="json")
    for interval, steps in zip(data["intervals"], steps_by_interval, strict=True):
        for sample in interval["jobs"]:
            sample["step_cpu_us"] = steps.get(sample["job_id"], {})
    return Batch.model_validate(data)


def stored_steps(engine) -> dict[tuple[str, str, str], int]:
    with Session(engine) as session:
        rows = session.execute(
            select(JobStepEnergy.job_id, JobStepEnergy.step, JobStepEnergy.component,
                   JobStepEnergy.energy_uj).where(JobStepEnergy.cluster == "c1")
        )
        return {tuple(row[:3]): row[3] for row in rows}


def test_step_energy_split_by_step_cpu_time(engine, make_batch):
    # Job 101: batch and step 0 (3:1, then 1:1, then 1:0); job 102: steps in interval 2 only.
    batch = with_steps(
        make_batch(jobs={"101": 3, "102": 1}, n_intervals=3,
                   sources=(("cpu", "package-0"), ("dram", "package-0/dram"),
                            ("cpu", "package-1"), ("psys", "psys"))),
        [
            {"101": {"batch": 300, "0": 100, "extern": 0}},
            {"101": {"batch": 5, "0": 5}},
            {"101": {"batch": 1}, "102": {"0": 2, "1": 1}},
        ],
    )
    ingest(engine, batch)
    ingest(engine, batch)  # a retried batch adds nothing

    # The job's energy per interval and component, derived from the scenario.
    job_uj = Counter()
    for index, interval in enumerate(batch.intervals):
        for src in interval.sources:
            for job_id, energy_uj in src.jobs_uj.items():
                job_uj[(index, job_id, src.component)] += energy_uj
    expected: Counter = Counter()
    for component in ("cpu", "dram"):
        e0, e1, e2 = (job_uj[(i, "101", component)] for i in range(3))
        # 300:100 → ¾ / ¼; the µJ left go by largest remainder (3e mod 4 vs e mod 4), a tie
        # to the first step in order (batch, extern, 0, 1, ...).
        q, r = divmod(e0, 4)
        expected[("101", "batch", component)] += 3 * q + (0, 1, 2, 2)[r]
        expected[("101", "0", component)] += q + (r == 3)
        expected[("101", "extern", component)] += 0
        half, odd = divmod(e1, 2)  # 1:1, the odd µJ to the first step in order (batch)
        expected[("101", "batch", component)] += half + odd
        expected[("101", "0", component)] += half
        expected[("101", "batch", component)] += e2
        third, rest = divmod(job_uj[(2, "102", component)], 3)
        expected[("102", "0", component)] += 2 * third + (1 if rest >= 1 else 0)
        expected[("102", "1", component)] += third + (1 if rest == 2 else 0)
    assert stored_steps(engine) == dict(expected)
    # Job 101 had all of its CPU time in steps in every interval: its steps add up to its energy.
    for component in ("cpu", "dram"):
        steps_sum = sum(v for (j, _, c), v in expected.items() if j == "101" and c == component)
        assert steps_sum == sum(job_uj[(i, "101", component)] for i in range(3))
    assert not any(c == "psys" for (_, _, c) in stored_steps(engine))


def test_batches_without_step_time_store_no_steps(engine, make_batch):
    ingest(engine, make_batch())
    assert stored_steps(engine) == {}


def test_a_job_covers_only_the_part_of_an_interval_it_lived(engine, make_batch):
    from jobenergy.core.schema import JobSample

    batch = make_batch(n_intervals=3, interval_s=15.0)
    first, last = batch.intervals[0], batch.intervals[-1]
    job_id = next(iter(first.sources[0].jobs_uj))
    lived_us = {0: 4_000_000, 2: 6_500_000}  # born 11 s into the first, ended 6.5 s into the last
    intervals = []
    for i, iv in enumerate(batch.intervals):
        jobs = [j for j in iv.jobs if j.job_id != job_id]
        jobs.append(JobSample(job_id=job_id, alive_us=lived_us.get(i)))
        intervals.append(iv.model_copy(update={"jobs": jobs}))
    batch = batch.model_copy(update={"intervals": intervals})
    assert first is not last
    ingest(engine, batch)
    with Session(engine) as session:
        rows = [r for r in session.scalars(select(JobEnergy)) if r.job_id == job_id]
        assert rows
        for row in rows:
            assert row.covered_s == pytest.approx(4.0 + 15.0 + 6.5)


# ---------------------------------------------------------------------------------------------
# node_energy_hour


def expected_node_hours(*batches: Batch) -> dict[tuple[str, str, datetime], list[int]]:
    """Each stored share (every job's; the node's own when stored) split over the UTC hours
    alone, summed per (node, component, hour): [measured, unattributed]."""
    hours: dict[tuple[str, str, datetime], list[int]] = {}
    for batch in batches:
        for iv in batch.intervals:
            for src in iv.sources:
                shares = [(uj, False) for uj in src.jobs_uj.values()]
                if src.unattributed_uj or not src.jobs_uj:
                    shares.append((src.unattributed_uj, True))
                for uj, own in shares:
                    for hour, part in split_over_hours(iv.start, iv.end, uj).items():
                        acc = hours.setdefault((batch.node, src.component, hour), [0, 0])
                        acc[0] += part
                        acc[1] += part if own else 0
    return hours


def stored_node_hours(session: Session, cluster: str = "c1"
                      ) -> dict[tuple[str, str, datetime], list[int]]:
    h = NodeEnergyHour
    return {(r.node, r.component, r.hour_at): [r.measured_uj, r.unattributed_uj]
            for r in session.scalars(select(h).where(h.cluster == cluster))}


def stored_node_hour_sums(session: Session, cluster: str) -> dict[tuple[str, str], list[int]]:
    sums: dict[tuple[str, str], list[int]] = {}
    for (node, component, _hour), (measured, unattributed) in stored_node_hours(
            session, cluster).items():
        acc = sums.setdefault((node, component), [0, 0])
        acc[0] += measured
        acc[1] += unattributed
    return sums


def node_totals_per_component(session: Session, cluster: str) -> dict[tuple[str, str], list[int]]:
    sums: dict[tuple[str, str], list[int]] = {}
    for ne in session.scalars(select(NodeEnergy).where(NodeEnergy.cluster == cluster)):
        acc = sums.setdefault((ne.node, ne.component), [0, 0])
        acc[0] += ne.measured_uj
        acc[1] += ne.unattributed_uj
    return sums


def test_node_hours_split_every_share_exactly(engine, make_batch):
    """Intervals of 25 min from 10:50:00.3: most cross an hour edge; each share (jobs', the
    node's) is split alone, the batches' parts add up in the same rows, and the hours add up
    to node_energy and, attributed, to the jobs' hours."""
    start = make_batch().intervals[0].start + timedelta(minutes=50, microseconds=300_000)
    batches = [
        make_batch(seq=0, start=start, interval_s=1500, n_intervals=3,
                   jobs={"101": 3, "102": 1}),
        # Unattributed weight 0: no row of the node's own where the jobs take everything.
        make_batch(seq=1, start=start + timedelta(seconds=4500), interval_s=1500,
                   n_intervals=2, jobs={"101": 1}, unattributed_weight=0),
        make_batch(node="n2", seq=0, start=start, interval_s=10.0, n_intervals=4, jobs={}),
    ]
    for batch in batches:
        ingest(engine, batch)
    ingest(engine, batches[0])  # a retry adds nothing
    with Session(engine) as session:
        stored = stored_node_hours(session)
        assert stored == expected_node_hours(*batches)
        assert len({hour for _, _, hour in stored}) == 3  # 10:50:00.3 to 12:55:00.3
        assert stored_node_hour_sums(session, "c1") == node_totals_per_component(session, "c1")
        # n1's attributed part of each hour is the sum of its jobs' hours (one node).
        job_hours = Counter()
        for row in session.scalars(select(JobEnergyHour)):
            job_hours[row.hour_at] += row.energy_uj
        attributed = Counter()
        for (node, _component, hour), (measured, unattributed) in stored.items():
            if node == "n1":
                attributed[hour] += measured - unattributed
        assert attributed == job_hours
