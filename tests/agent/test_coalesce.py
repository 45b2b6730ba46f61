"""Coalescing sampled intervals into stored ones (agent/coalesce.py) changes no total.

The oracle is the collector itself (``derived``, tests/agent/conftest.py): what it derives
from a batch must be the same whether the sampled intervals are stored one by one or merged.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobenergy.agent.coalesce import HOUR_US, Coalescer
from jobenergy.agent.phases import MAX_PHASES_PER_INTERVAL
from jobenergy.agent.records import (
    JobRecord,
    PhaseSample,
    SampledInterval,
    SourceSample,
    check_sampled,
)
from jobenergy.agent.wire import interval_json
from jobenergy.core.schema import Batch, Interval

S = 1_000_000  # µs
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def stored(records: list[SampledInterval], store_s: float, sample_s: float = 1.0,
           split_steps: bool = True) -> list[Interval]:
    """Return the wire intervals the coalescer makes of ``records`` (``split_steps``: for a
    collector that stores ``step_uj``)."""
    coalescer = Coalescer(round(store_s * S), round(sample_s * S), split_steps)
    for rec in records:
        coalescer.add(rec)
    coalescer.close()
    out = []
    for group in coalescer.take():
        text = interval_json(group.wire())  # what the agent sends
        interval = Interval.model_validate(group.wire())
        assert interval.model_dump_json() == text  # the wire model's own bytes
        out.append(interval)
    return out


# -- building sampled intervals -------------------------------------------------------------

SOURCES = [
    ("cpu", "package-0", None, False),
    ("dram", "package-0/dram", None, False),
    ("psys", "psys", None, False),
    ("gpu", "gpu/GPU-1", "NVIDIA H100", False),
    ("gpu", "gpu/GPU-2", "NVIDIA H100", True),
]


def source(spec, jobs_uj: dict[str, int], unattributed: int, wraps=0, resets=0) -> SourceSample:
    component, name, device, estimated = spec
    return SourceSample(
        component=component, source=name, measured_uj=sum(jobs_uj.values()) + unattributed,
        jobs_uj=jobs_uj, unattributed_uj=unattributed, estimated=estimated, wraps=wraps,
        resets=resets, device_name=device,
    )


def record(start_us, end_us, sources, jobs=(), phases=(), gap=False) -> SampledInterval:
    rec = SampledInterval(
        start=_at(start_us), end=_at(end_us), start_us=start_us, end_us=end_us,
        sources=list(sources), jobs=list(jobs), phases=list(phases), gap=gap,
    )
    check_sampled(rec)
    return rec


@st.composite
def timelines(draw) -> list[SampledInterval]:
    """A node's sampled intervals: jobs coming and going, steps, phases, GPUs, wraps, resets,
    gap intervals, holes in time, sources appearing and vanishing, hour boundaries."""
    n = draw(st.integers(1, 30))
    calm = draw(st.integers(1, 10))  # events are this many times rarer
    t = 1_800_000_000 * S + draw(st.integers(0, HOUR_US // S)) * S - draw(st.integers(0, 40)) * S
    pool = {"1": (1000, 2), "2": (1001, 4), "3": (None, None), "4": (1002, 1), "5": (1003, 8)}
    labels = [None, ("training", "resnet"), ("inference", None), ("training", None)]
    label = {j: draw(st.sampled_from(labels)) for j in pool}
    steps_of = {j: draw(st.sampled_from([(), ("batch",), ("0",), ("batch", "0")])) for j in pool}
    live = set(draw(st.sets(st.sampled_from(sorted(pool)))))
    ended: set[str] = set()
    gpu_holders = {"gpu/GPU-1": {"1"}, "gpu/GPU-2": {"2", "5"}}
    out = []
    for _ in range(n):
        if draw(st.integers(0, 10 * calm - 1)) == 0:
            t += draw(st.integers(1, 3 * S))  # a hole: the agent was not sampling
        span = draw(st.sampled_from([S, S, S, S + 3, S - 7, S // 2, 3 * S, S // 1000]))
        start, end = t, t + span
        t = end
        if draw(st.integers(0, 15 * calm - 1)) == 0:  # a gap interval: all unattributed
            specs = SOURCES[:2]
            out.append(record(start, end, [source(s, {}, draw(st.integers(0, 10**6)))
                                           for s in specs], gap=True))
            continue
        # jobs start, end, change phase now and then
        for j in sorted(pool):
            roll = draw(st.integers(0, 20 * calm - 1))
            if roll == 0 and j not in ended:
                live.add(j)
            elif roll == 1:
                live.discard(j)
            elif roll == 2:
                label[j] = draw(st.sampled_from(labels))
            elif roll == 3:
                steps_of[j] = draw(st.sampled_from([(), ("batch",), ("0",), ("batch", "0")]))
        present = sorted(live)
        jobs = []
        for j in present:
            uid, cpus = pool[j]
            ends_now = draw(st.integers(0, 25 * calm - 1)) == 0
            alive = None if draw(st.integers(0, 2 * calm)) else draw(
                st.sampled_from([0, span // 3, span - 1]))
            idle = draw(st.integers(0, 6 * calm - 1)) == 0
            steps = {
                s: draw(st.integers(1, 10**6)) for s in steps_of[j]
            } if not idle else {}
            phase, model = label[j] or (None, None)
            jobs.append(JobRecord(
                job_id=j, uid=uid, cpus=cpus, cpu_time_us=sum(steps.values()), ended=ends_now,
                step_cpu_us=steps, phase=phase, model=model, alive_us=alive,
            ))
            if ends_now:
                live.discard(j)
                ended.add(j)
        specs = [s for s in SOURCES if draw(st.integers(0, 30 * calm)) != 0]  # a failed read
        sources = []
        for spec in specs:
            if spec[0] == "psys":
                shares: dict[str, int] = {}
            elif spec[0] == "gpu":
                holders = [j for j in present if j in gpu_holders[spec[1]]]
                shares = {
                    j: e for j in holders if (e := draw(st.integers(0, 3 * 10**6)))
                }
            else:
                shares = {j: draw(st.integers(0, 5 * 10**6)) for j in present}
            wraps = int(spec[0] in ("cpu", "dram") and draw(st.integers(0, 12 * calm)) == 0)
            resets = int(spec[0] == "gpu" and draw(st.integers(0, 25 * calm)) == 0)
            sources.append(source(spec, shares, draw(st.integers(0, 10**6)), wraps, resets))
        with_shares = {j for s in sources for j in s.jobs_uj}
        jobs += [JobRecord(job_id=j) for j in sorted(with_shares - {r.job_id for r in jobs})]
        phases = [
            PhaseSample(job_id=j, phase="training", model="m", start=_at(start - 5 * S),
                        end=_at(start), samples=draw(st.integers(0, 100)))
            for j in present
            if draw(st.integers(0, 10 * calm - 1)) == 0
        ][:MAX_PHASES_PER_INTERVAL]
        out.append(record(start, end, sources, jobs, phases))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=timelines(), store_s=st.sampled_from([1.5, 2.0, 5.0, 10.0, 60.0]),
       split_steps=st.booleans())
def test_merged_intervals_give_the_collector_the_same_totals(records, store_s, split_steps,
                                                             derived):
    one_by_one = stored(records, 1.0)
    assert len(one_by_one) == len(records)
    merged = stored(records, store_s, split_steps=split_steps)
    if not split_steps:  # for an older collector: never the field it would refuse
        assert all(j.step_uj is None for i in merged for j in i.jobs)
    assert len(merged) <= len(records)
    assert derived(merged) == derived(one_by_one)
    # Stored intervals follow each other as the sampled ones did, none longer than allowed.
    assert [i.start for i in merged][0] == records[0].start
    assert merged[-1].end == records[-1].end
    for interval in merged:
        assert (interval.end - interval.start).total_seconds() <= store_s + 0.5 or any(
            r.start == interval.start and r.end == interval.end for r in records
        )


def steady(n: int, *, start_us: int = 1_800_000_000 * S, jobs=("1", "2"), steps=("batch",)):
    """Sampled intervals of jobs that are busy in every sample, in one step each."""
    out = []
    for k in range(n):
        a, b = start_us + k * S, start_us + (k + 1) * S
        js = [JobRecord(job_id=j, uid=1000, cpus=2, cpu_time_us=900_000,
                        step_cpu_us=dict.fromkeys(steps, 900_000 // len(steps))) for j in jobs]
        out.append(record(a, b, [
            source(SOURCES[0], {j: 1_000_000 + k for j in jobs}, 500 + k),
            source(SOURCES[1], {j: 100_000 for j in jobs}, 7),
        ], js))
    return out


def test_steady_jobs_are_stored_every_store_interval(derived):
    records = steady(60)
    merged = stored(records, 10.0)
    assert [(i.end - i.start).total_seconds() for i in merged] == [10.0] * 6
    assert derived(merged) == derived(stored(records, 1.0))
    first = merged[0]
    pkg = first.sources[0]
    assert pkg.jobs_uj == {"1": sum(1_000_000 + k for k in range(10))} | {
        "2": sum(1_000_000 + k for k in range(10))
    }
    assert pkg.unattributed_uj == sum(500 + k for k in range(10))
    assert [(j.job_id, j.cpu_time_us, j.step_cpu_us, j.alive_us) for j in first.jobs] == [
        ("1", 9_000_000, {"batch": 9_000_000}, None),
        ("2", 9_000_000, {"batch": 9_000_000}, None),
    ]


def test_store_interval_equal_to_the_sample_interval_merges_nothing():
    records = steady(12)
    assert len(stored(records, 1.0)) == 12
    t = records[0].start_us
    short = [  # samples much shorter than interval_s (a test's ticks): still one by one
        record(t + k * 1000, t + (k + 1) * 1000, [source(SOURCES[0], {}, 5)]) for k in range(3)
    ]
    assert len(stored(short, 1.0)) == 3
    assert len(stored(short, 10.0)) == 1


def test_an_hour_boundary_is_never_inside_a_stored_interval(derived):
    hour = 1_800_000_000 * S // HOUR_US * HOUR_US + HOUR_US
    records = steady(20, start_us=hour - 5 * S - S // 2)  # one sample straddles the hour
    merged = stored(records, 10.0)
    straddling = [i for i in merged if i.start < _at(hour) < i.end]
    assert [(i.end - i.start).total_seconds() for i in straddling] == [1.0]
    assert derived(merged)["hours"] == derived(stored(records, 1.0))["hours"]


def test_a_phase_change_cuts_the_stored_interval(derived):
    records = steady(10)
    for r in records[4:]:
        for j in r.jobs:
            j.phase, j.model = "training", "bert"
    merged = stored(records, 10.0)
    assert [len(i.jobs) and i.jobs[0].phase for i in merged] == [None, "training"]
    assert derived(merged)["phases"] == derived(stored(records, 1.0))["phases"]


def test_several_busy_steps_are_merged_with_the_split_of_each_sample(derived):
    # Two busy steps: the collector splits each interval's energy by that interval's step
    # CPU time (largest remainders); a merged interval would split the sum once, so it
    # carries the sum of the samples' splits (step_uj) instead.
    records = steady(10, steps=("batch", "0"))
    for k, r in enumerate(records):
        for j in r.jobs:
            j.step_cpu_us = {"batch": 9, "0": 1} if k % 2 else {"batch": 1, "0": 9}
        r.sources = [source(SOURCES[0], {"1": 10**6 * (1 + 2 * (k % 2)), "2": 5}, 0)]
    from jobenergy.collector.steps import plan_steps

    naive_steps = plan_steps(Batch(
        schema_version=1, cluster="c", node="n", boot_id="b", seq=0,
        intervals=[Interval.model_validate(_naive_merge(records))],
    ))
    exact = plan_steps(Batch(
        schema_version=1, cluster="c", node="n", boot_id="b", seq=0,
        intervals=stored(records, 1.0),
    ))
    assert naive_steps != exact  # why the split goes with the merged interval
    merged = stored(records, 10.0)
    assert len(merged) == 1 and derived(merged) == derived(stored(records, 1.0))
    by_job = {j.job_id: j.step_uj for j in merged[0].jobs}
    # Job 1: odd samples 3 MJ split 9:1, even ones 1 MJ split 1:9 (5 of each).
    assert by_job["1"] == {"cpu": {"batch": 5 * 2_700_000 + 5 * 100_000,
                                   "0": 5 * 300_000 + 5 * 900_000}}
    assert {k: v for k, v in exact.items() if k[0] == "1"} == {
        ("1", "batch", "cpu"): by_job["1"]["cpu"]["batch"],
        ("1", "0", "cpu"): by_job["1"]["cpu"]["0"]}
    # What a collector stores of it: what it stores of the samples, step by step.
    assert plan_steps(Batch(schema_version=1, cluster="c", node="n", boot_id="b", seq=0,
                            intervals=merged)) == exact
    # A collector that has not said it stores step_uj: each sample stored apart instead.
    older = stored(records, 10.0, split_steps=False)
    assert len(older) == 10 and derived(older) == derived(stored(records, 1.0))


def _naive_merge(records):
    """Sum everything (what exactness forbids for several busy steps)."""
    first = stored(records[:1], 1.0)[0].model_dump()
    for r in records[1:]:
        for src, add in zip(first["sources"], r.sources, strict=True):
            src["measured_uj"] += add.measured_uj
            src["unattributed_uj"] += add.unattributed_uj
            for j, e in add.jobs_uj.items():
                src["jobs_uj"][j] = src["jobs_uj"].get(j, 0) + e
        for job, add in zip(first["jobs"], r.jobs, strict=True):
            job["cpu_time_us"] += add.cpu_time_us
            for s, us in add.step_cpu_us.items():
                job["step_cpu_us"][s] = job["step_cpu_us"].get(s, 0) + us
    first["end"] = records[-1].end
    return first


def test_a_job_idle_for_a_sample_keeps_that_energy_outside_its_steps(derived):
    records = steady(10)
    records[5].jobs[0].step_cpu_us = {}  # energy but no step time: "outside" any step
    merged = stored(records, 10.0)
    assert len(merged) == 1
    assert derived(merged) == derived(stored(records, 1.0))
    job1, job2 = merged[0].jobs
    # Job 1's split leaves out sample 5's energy; job 2 needs none (one busy step).
    assert job1.step_uj == {
        "cpu": {"batch": sum(1_000_000 + k for k in range(10) if k != 5)},
        "dram": {"batch": 9 * 100_000},
    }
    assert job2.step_uj is None


def test_gap_reset_and_a_change_of_sources_stand_apart(derived):
    records = steady(12)
    records[3] = record(records[3].start_us, records[3].end_us,
                        [source(SOURCES[0], {}, 10), source(SOURCES[1], {}, 1)], gap=True)
    pkg, dram = records[6].sources
    records[6].sources = [pkg]  # the DRAM zone could not be read
    gpu = source(SOURCES[3], {}, 99, resets=1)
    records[9].sources = [*records[9].sources, gpu]
    merged = stored(records, 10.0)
    assert [(i.start, i.end) for i in merged] == [
        (records[0].start, records[2].end), (records[3].start, records[3].end),
        (records[4].start, records[5].end), (records[6].start, records[6].end),
        (records[7].start, records[8].end), (records[9].start, records[9].end),
        (records[10].start, records[11].end),
    ]
    assert derived(merged) == derived(stored(records, 1.0))


def test_alive_time_adds_up_over_the_samples_a_job_was_in(derived):
    records = steady(4)
    records[0].jobs[1].alive_us = 250_000  # job 2 started inside the first sample
    records[0].sources = [
        source(SOURCES[0], {"1": 5, "2": 3}, 0), source(SOURCES[1], {"1": 5, "2": 3}, 0)
    ]
    merged = stored(records, 10.0)
    (interval,) = merged
    assert [(j.job_id, j.alive_us) for j in interval.jobs] == [("1", None), ("2", 3_250_000)]
    got, want = derived(merged)["job"], derived(stored(records, 1.0))["job"]
    assert got == want
    assert math.isclose(got[("2", "cpu", "package-0")][2], 3.25)


def test_a_stored_interval_is_closed_once_no_sample_fits():
    coalescer = Coalescer(10 * S, S)
    records = steady(25)
    for r in records[:9]:
        coalescer.add(r)
    assert coalescer.ready == 0 and coalescer.open_since_us == records[0].start_us
    coalescer.add(records[9])
    assert coalescer.ready == 1 and coalescer.open_since_us is None  # 10 s: complete
    coalescer.add(records[10])
    coalescer.expire(records[10].end_us + 9 * S)  # samples failed since: still fits one
    assert coalescer.ready == 1
    coalescer.expire(records[10].start_us + 10 * S + S // 2 + 1)
    assert coalescer.ready == 2
    assert [len(g.records) for g in coalescer.take()] == [10, 1]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_records_are_listed_in_order_until_taken(n):
    coalescer = Coalescer(10 * S, S)
    records = steady(12)[: 9 + n]
    for r in records:
        coalescer.add(r)
    assert list(coalescer.records()) == records
    taken = coalescer.take()
    assert [r for g in taken for r in g.records] == records[: 10 if n else 0]
    assert list(coalescer.records()) == records[10 if n else 0 :]
