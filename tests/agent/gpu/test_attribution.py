"""attribute_device: the rules of jobenergy.agent.gpu.attribution, and conservation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobenergy.agent.gpu.attribution import DeviceState, ProcessState, attribute_device

JOBS = ["1", "2", "3", "s0123456789abc"]


def test_first_interval_without_prev():
    cur = DeviceState(allocated=frozenset({"1"}))
    assert attribute_device(999, None, cur) == ({"1": 999}, 0)


def test_prev_holder_pays_last_interval_only_when_nobody_holds_now():
    prev = DeviceState(allocated=frozenset({"1"}))
    assert attribute_device(10, prev, DeviceState()) == ({"1": 10}, 0)
    nxt = DeviceState(allocated=frozenset({"2"}))
    assert attribute_device(10, prev, nxt) == ({"2": 10}, 0)


def test_allocated_job_without_process_next_to_busy_foreign_job_gets_nothing():
    cur = DeviceState(allocated=frozenset({"1"}), processes=(ProcessState("2", 50),))
    assert attribute_device(100, None, cur) == ({"1": 0, "2": 100}, 0)


def test_idle_sharing_splits_evenly_with_remainder_conserved():
    cur = DeviceState(
        processes=(ProcessState("1", 0), ProcessState("2", None), ProcessState("3", None))
    )
    jobs, unattributed = attribute_device(100, None, cur)
    assert sorted(jobs.values()) == [33, 33, 34] and unattributed == 0


def test_mig_instance_without_job_process_is_unattributed():
    cur = DeviceState(processes=(ProcessState("1", 5, gpu_instance=1),), mig_slices={1: 1, 2: 6})
    assert attribute_device(7_000, None, cur) == ({"1": 1_000}, 6_000)


processes = st.builds(
    ProcessState,
    job_id=st.one_of(st.none(), st.sampled_from(JOBS)),
    sm_util=st.one_of(st.none(), st.integers(0, 100)),
    gpu_instance=st.one_of(st.none(), st.integers(0, 3)),
)
states = st.builds(
    DeviceState,
    allocated=st.frozensets(st.sampled_from(JOBS), max_size=3),
    processes=st.lists(processes, max_size=6).map(tuple),
    mig_slices=st.dictionaries(st.integers(0, 3), st.integers(0, 7), max_size=4),
)


@given(delta_uj=st.integers(0, 10**15), prev=st.one_of(st.none(), states), cur=states)
def test_conservation_over_random_states(delta_uj, prev, cur):
    jobs, unattributed = attribute_device(delta_uj, prev, cur)
    assert unattributed >= 0 and all(v >= 0 for v in jobs.values())
    assert sum(jobs.values()) + unattributed == delta_uj
    assert "" not in jobs
    holders = cur if cur.held or prev is None or not prev.held else prev
    assert set(jobs) <= holders.allocated | {p.job_id for p in holders.processes}
