"""BMC reconciliation: other = BMC − (cpu + dram + gpu), exact, per BMC window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobenergy.agent.bmc_poller import BmcCounter, BmcSnapshot
from jobenergy.agent.reconcile import Reconciler
from jobenergy.agent.records import JobRecord, SourceSample
from jobenergy.agent.sensors.bmc import BmcReading

SPAN_US = 1_000_000


def _src(component, source, jobs, node_uj):
    return SourceSample(component, source, sum(jobs.values()) + node_uj, dict(jobs), node_uj)


def _by_source(records):
    return {r.source: r for r in records}


def test_other_is_the_bmc_surplus_split_by_measured_energy():
    rec = Reconciler("measured")
    jobs = [JobRecord("1", cpus=4), JobRecord("2", cpus=4)]
    assert rec.add([], jobs, BmcSnapshot(0, True, 1), span_us=SPAN_US, ncpus=8)
    rec.commit()
    sources = [_src("cpu", "package-0", {"1": 300, "2": 100}, 0),
               _src("gpu", "gpu/A", {"1": 600}, 0)]
    out = _by_source(rec.add(sources, jobs, BmcSnapshot(1_250, True, 2), span_us=SPAN_US,
                             ncpus=8))
    rec.commit()
    assert out["bmc"].measured_uj == 1_250 and out["bmc"].jobs_uj == {}
    other = out["bmc/other"]
    assert other.measured_uj == 250 and other.estimated
    assert other.jobs_uj == {"1": 225, "2": 25} and other.unattributed_uj == 0
    assert 1_000 + other.measured_uj == out["bmc"].measured_uj


def test_allocated_policy_splits_by_cpus_and_the_node_keeps_free_cpus():
    rec = Reconciler("allocated")
    jobs = [JobRecord("1", cpus=6), JobRecord("2", cpus=2, alive_us=SPAN_US // 2)]
    rec.add([], jobs, BmcSnapshot(0, True, 1), span_us=SPAN_US, ncpus=16)
    rec.commit()
    out = _by_source(rec.add([], jobs, BmcSnapshot(1_600, True, 2), span_us=SPAN_US, ncpus=16))
    # weights: 6 × 1 s, 2 × 0.5 s, node 16 − 7 CPU·s
    assert out["bmc/other"].jobs_uj == {"1": 600, "2": 100}
    assert out["bmc/other"].unattributed_uj == 900


def test_bmc_below_the_measured_sum_takes_nothing_and_is_flagged():
    rec = Reconciler()
    jobs = [JobRecord("1", cpus=4)]
    rec.add([], jobs, BmcSnapshot(0, True, 1), span_us=SPAN_US, ncpus=4)
    rec.commit()
    sources = [_src("cpu", "package-0", {"1": 900}, 100)]
    out = _by_source(rec.add(sources, jobs, BmcSnapshot(700, True, 2), span_us=SPAN_US,
                             ncpus=4))
    rec.commit()
    assert "bmc" not in out or out["bmc"].measured_uj == 0
    assert out["bmc/flagged"].measured_uj == 700 and out["bmc/flagged"].jobs_uj == {}
    assert out["bmc/other"].measured_uj == 0
    assert rec.flagged_total == 1


def test_a_bmc_only_node_splits_the_whole_bmc_energy_by_allocation():
    rec = Reconciler("measured")  # nothing measured: falls back to allocated CPUs
    jobs = [JobRecord("7", cpus=3), JobRecord("8", cpus=1)]
    rec.add([], jobs, BmcSnapshot(0, True, 1), span_us=SPAN_US, ncpus=4)
    rec.commit()
    out = _by_source(rec.add([], jobs, BmcSnapshot(4_000_001, True, 2), span_us=SPAN_US,
                             ncpus=4))
    other = out["bmc/other"]
    assert other.measured_uj == out["bmc"].measured_uj == 4_000_001
    assert other.jobs_uj == {"7": 3_000_001, "8": 1_000_000} and other.unattributed_uj == 0


def test_an_uncommitted_interval_changes_nothing():
    rec = Reconciler()
    rec.add([], [], BmcSnapshot(0, False, 1), span_us=SPAN_US, ncpus=1)
    rec.commit()
    rec.add([_src("cpu", "p", {}, 10)], [], BmcSnapshot(100, False, 2), span_us=SPAN_US, ncpus=1)
    # not committed (the interval failed its checks): the next one sees the same window
    out = _by_source(rec.add([_src("cpu", "p", {}, 10)], [], BmcSnapshot(100, False, 2),
                             span_us=SPAN_US, ncpus=1))
    assert out["bmc"].measured_uj == 100 and out["bmc/other"].measured_uj == 90


def test_a_window_too_large_for_one_interval_is_carried_over_exactly():
    rec = Reconciler()
    rec.add([], [JobRecord("1", cpus=1)], BmcSnapshot(0, True, 1), span_us=SPAN_US, ncpus=1)
    rec.commit()
    huge = 60_000 * 1_000_000  # 60 kJ in a 1 s interval: more than the wire's bound
    got = 0
    snap = BmcSnapshot(huge, True, 2)
    for _ in range(5):
        out = _by_source(rec.add([], [JobRecord("1", cpus=1)], snap, span_us=SPAN_US, ncpus=1))
        rec.commit()
        assert out["bmc"].measured_uj <= 25_000 * 1_000_000
        got += out["bmc"].measured_uj
    assert got == huge


def test_the_counter_never_decreases_and_caps_absurd_jumps():
    counter = BmcCounter()
    counter.add(BmcReading(None, 5_000), 0)
    after_reset = counter.add(BmcReading(None, 1_000), 1_000_000_000)  # BMC counter restarted
    assert after_reset.total_uj == 1_000 and not after_reset.estimated
    capped = counter.add(BmcReading(None, 10**18), 2_000_000_000)
    assert capped.total_uj - after_reset.total_uj <= 50_000 * 1_000_000


_jobs = st.sampled_from(["1", "2", "3"])
_interval = st.tuples(
    st.dictionaries(_jobs, st.integers(0, 10**9), max_size=3),  # cpu shares
    st.integers(0, 10**9),  # cpu unattributed
    st.dictionaries(_jobs, st.integers(0, 10**9), max_size=3),  # gpu shares
    st.dictionaries(_jobs, st.integers(0, 64), max_size=3),  # allocated cpus
    st.one_of(st.none(), st.integers(0, 5 * 10**9)),  # BMC energy since the last answer
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_interval, min_size=1, max_size=30), st.sampled_from(["measured", "allocated"]),
       st.integers(0, 128))
def test_conservation_every_bmc_microjoule_lands_once(intervals, policy, ncpus):
    rec = Reconciler(policy)
    total_uj, seq = 0, 0
    emitted_bmc = 0
    window_measured = 0
    baseline = None
    for cpu, cpu_node, gpu, cpus, bmc_uj in intervals:
        sources = [_src("cpu", "package-0", cpu, cpu_node), _src("gpu", "gpu/A", gpu, 0),
                   _src("psys", "psys", {}, 10**6)]
        jobs = [JobRecord(j, cpus=n) for j, n in sorted(cpus.items())]
        snap = None
        window_measured += sum(s.measured_uj for s in sources[:2])
        if bmc_uj is not None:
            total_uj += bmc_uj
            seq += 1
            snap = BmcSnapshot(total_uj, True, seq)
        out = rec.add(sources, jobs, snap, span_us=SPAN_US, ncpus=ncpus)
        rec.commit()
        if snap is not None and baseline is None:
            baseline = total_uj
        by = _by_source(out)
        for record in out:
            assert sum(record.jobs_uj.values()) + record.unattributed_uj == record.measured_uj
            assert record.measured_uj >= 0
            if record.component == "bmc":
                assert not record.jobs_uj
                emitted_bmc += record.measured_uj
        if snap is not None and baseline != total_uj:
            bmc_window = bmc_uj
            closed = by.get("bmc/flagged") or by["bmc"]
            if bmc_window < window_measured:
                assert by["bmc/flagged"].measured_uj == bmc_window
                assert by["bmc/other"].measured_uj == 0
            elif bmc_window <= 25_000 * 10**6:  # not carried over
                assert closed.measured_uj == bmc_window
                assert window_measured + by["bmc/other"].measured_uj == bmc_window
        if snap is not None:
            window_measured = 0
    if baseline is not None:
        pending = sum(r.measured_uj for r in rec._state.backlog.values() if r.component == "bmc")
        assert emitted_bmc + pending == total_uj - baseline
