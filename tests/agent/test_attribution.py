from hypothesis import given
from hypothesis import strategies as st

from jobenergy.agent.attribution import JobUsage, StaticFloor, attribute_cpu, job_usage
from jobenergy.agent.readings import CgroupSnapshot, JobCgroup


def _snap(jobs, root=None, other=0):
    return CgroupSnapshot(
        version=1,
        jobs={
            j: JobCgroup(j, 1000, usage, frozenset(range(cpus)))
            for j, (usage, cpus) in jobs.items()
        },
        root_usage_ns=root,
        other_usage_ns=other,
    )


def test_new_job_counts_from_zero_and_vanished_job_gets_root_residual():
    prev = _snap({"1": (5_000, 4), "2": (7_000, 2)}, root=12_000)
    # job 2 ends and its cgroup is removed after using 3_000 ns more; job 3 starts and uses 900.
    cur = _snap({"1": (6_000, 4), "3": (900, 8)}, root=12_000 + 1_000 + 3_000 + 900)
    usage = job_usage(prev, cur)
    assert usage["1"] == JobUsage(1_000, 4, uid=1000)
    assert usage["3"].cpu_ns == 900 and not usage["3"].ended
    assert usage["2"].cpu_ns == 3_000 and usage["2"].ended


def test_v2_other_children_usage_is_not_given_to_vanished_jobs():
    prev = _snap({"1": (0, 1), "2": (0, 1)}, root=0, other=100)
    cur = _snap({"1": (50, 1)}, root=50 + 400 + 30, other=130)  # slurmstepd used 30
    assert job_usage(prev, cur)["2"].cpu_ns == 400


def test_alone_on_node_gets_everything_empty_node_gets_nothing():
    assert attribute_cpu(999, {"7": JobUsage(1, 1)}, node_busy_ns=10, ncpus=64, static_uj=500) == (
        {"7": 999},
        0,
    )
    assert attribute_cpu(999, {}, node_busy_ns=10, ncpus=64, static_uj=500) == ({}, 999)


def test_shared_node_static_by_allocation_dynamic_by_cpu_time():
    # 16 CPUs, job a holds 4 (busy 3 s), job b holds 4 (busy 1 s), OS busy 1 s more.
    usage = {"a": JobUsage(3_000, 4), "b": JobUsage(1_000, 4)}
    static_uj, dynamic_uj = 1_600, 10_000
    jobs, unattributed = attribute_cpu(
        static_uj + dynamic_uj, usage, node_busy_ns=5_000, ncpus=16, static_uj=static_uj
    )
    # static: a 4/16, b 4/16, idle 8/16; dynamic: a 3/5, b 1/5, OS 1/5
    assert jobs == {"a": 400 + 6_000, "b": 400 + 2_000}
    assert unattributed == 800 + 2_000


@given(
    delta=st.integers(0, 10**12),
    static=st.integers(0, 10**12),
    ncpus=st.integers(1, 256),
    busy=st.integers(0, 10**12),
    jobs=st.dictionaries(
        st.text("0123456789", min_size=1, max_size=6),
        st.tuples(st.integers(0, 10**11), st.integers(0, 64)),
        max_size=40,
    ),
)
def test_conservation_over_random_intervals(delta, static, ncpus, busy, jobs):
    usage = {j: JobUsage(ns, cpus) for j, (ns, cpus) in jobs.items()}
    shares, unattributed = attribute_cpu(
        delta, usage, node_busy_ns=busy, ncpus=ncpus, static_uj=static
    )
    assert sum(shares.values()) + unattributed == delta
    assert all(v >= 0 for v in shares.values()) and unattributed >= 0
    assert set(shares) <= set(usage)


@given(
    prev_usage=st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 10**9), max_size=6),
    grow=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 10**9), max_size=8),
    vanished_extra=st.integers(0, 10**9),
)
def test_job_usage_never_negative_and_residual_conserved(prev_usage, grow, vanished_extra):
    prev = _snap({j: (u, 2) for j, u in prev_usage.items()}, root=sum(prev_usage.values()))
    cur_jobs = {j: (prev_usage.get(j, 0) + g, 2) for j, g in grow.items()}
    vanished = set(prev_usage) - set(cur_jobs)
    root = sum(prev_usage.values()) + sum(grow.values()) + (vanished_extra if vanished else 0)
    usage = job_usage(prev, _snap(cur_jobs, root=root))
    assert all(u.cpu_ns >= 0 for u in usage.values())
    assert sum(usage[j].cpu_ns for j in vanished) == (vanished_extra if vanished else 0)


def test_static_floor_configured_and_learned():
    assert StaticFloor(50.0).static_uj(10**9, 2_000_000_000) == 100 * 10**6  # 50 W × 2 s
    floor = StaticFloor(None, window_ns=10**9)  # a window of one interval
    assert floor.static_uj(300 * 10**6, 10**9) == 300 * 10**6  # first interval: 300 W floor
    assert floor.static_uj(100 * 10**6, 10**9) == 100 * 10**6  # lower: 100 W
    assert floor.static_uj(900 * 10**6, 10**9) == 100 * 10**6  # keeps the minimum
    unlearned = StaticFloor(None)  # default window: 5 s of intervals before any floor
    assert unlearned.static_uj(300 * 10**6, 10**9) == 0
