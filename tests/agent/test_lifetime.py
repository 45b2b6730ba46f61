"""A job pays for the time it existed (DESIGN.md decision 16): boundary intervals prorated.

Expected figures are derived from the times the scenario produced (the job cgroup's ctime,
the epilog's end mark, the samples' wall times), never hard-coded.
"""

from __future__ import annotations

import os

import pytest

from jobenergy.agent.attribution import JobUsage, attribute_cpu
from jobenergy.agent.daemon import Agent
from jobenergy.agent.jobmap import parse_job_map, read_job_map
from jobenergy.agent.lifetime import alive_spans
from jobenergy.agent.readings import JobCgroup
from jobenergy.agent.settings import AgentSettings
from jobenergy.core.split import split_uj
from jobenergy.sim.node import SimNode


def _ns(moment) -> int:
    from jobenergy.agent.sampler import _epoch_ns

    return _epoch_ns(moment)


def test_job_map_lines():
    entry = parse_job_map("0,2-3\nstart=1796196766.600592033\nend=1796196768.5\n")
    assert entry.gpus == frozenset({0, 2, 3})
    assert entry.start_ns == 1_796_196_766_600_592_128 or abs(
        entry.start_ns - 1_796_196_766_600_592_033) < 1_000  # float seconds: sub-µs rounding
    assert entry.end_ns == 1_796_196_768_500_000_000
    assert entry.ended_by(entry.end_ns) and not entry.ended_by(entry.end_ns - 1)
    old = parse_job_map("1\n")  # a hook of the previous release: GPUs only
    assert (old.gpus, old.start_ns, old.end_ns) == (frozenset({1}), None, None)
    junk = parse_job_map("\nstart=nan\nend=-5\nend2=7\nx\n")
    assert (junk.gpus, junk.start_ns, junk.end_ns) == (frozenset(), None, None)


def test_job_map_reads_only_job_named_plain_files(tmp_path):
    (tmp_path / "12").write_text("0\nstart=100\n")
    (tmp_path / ".13.tmp").write_text("1\n")  # a hook's temp file
    (tmp_path / "bad name").write_text("1\n")
    (tmp_path / "14").symlink_to(tmp_path / "12")
    assert set(read_job_map(tmp_path)) == {"12"}
    assert read_job_map(tmp_path / "absent") == {}


def test_alive_from_birth_to_end_mark():
    cg = JobCgroup("5", 1000, 0, born_ns=1_300)
    new = alive_spans(["5"], start_ns=1_000, end_ns=2_000, prev_jobs={}, cur_jobs={"5": cg},
                   job_map={})
    assert new == {"5": (300, 1_000)}
    ended = alive_spans(["5"], start_ns=2_000, end_ns=3_000, prev_jobs={"5": cg}, cur_jobs={},
                     job_map={"5": parse_job_map("\nend=0.0000024\n")})
    assert ended == {"5": (0, 400)}
    whole = alive_spans(["5"], start_ns=2_000, end_ns=3_000, prev_jobs={"5": cg},
                     cur_jobs={"5": cg}, job_map={})
    assert whole == {}  # lived through: not prorated
    # Birth before the interval (missed by a sample) is clipped to its start.
    early = alive_spans(["5"], start_ns=2_000, end_ns=3_000, prev_jobs={}, cur_jobs={"5": cg},
                     job_map={})
    assert early == {}
    # In the map, no cgroup yet and not ended: the prolog ran, the job does not exist yet.
    starting = parse_job_map("0\nstart=0.0000012\n")
    assert alive_spans(["6"], start_ns=1_000, end_ns=2_000, prev_jobs={}, cur_jobs={},
                    job_map={"6": starting}) == {"6": (0, 0)}
    # Never seen in a cgroup but ended: a short job, alive from the prolog to the epilog.
    short = parse_job_map("\nstart=0.0000012\nend=0.0000015\n")
    assert alive_spans(["7"], start_ns=1_000, end_ns=2_000, prev_jobs={}, cur_jobs={},
                    job_map={"7": short}) == {"7": (200, 500)}


def test_alone_for_part_of_an_interval_pays_static_for_that_part():
    usage = {"9": JobUsage(cpu_ns=400, cpus=2, alive_ns=250)}
    jobs, unattributed = attribute_cpu(10_000, usage, node_busy_ns=500, ncpus=8,
                                       static_uj=6_000, span_ns=1_000)
    static = split_uj(6_000, {"9": 250, "": 750})
    # Busy time of no job (100 ns) counts for the job for the quarter of it that it lived.
    dynamic = split_uj(4_000, {"9": 400 + 25, "": 75})
    assert jobs == {"9": static["9"] + dynamic["9"]}
    assert jobs["9"] + unattributed == 10_000
    # The same job alive for the whole interval still takes all of it (exclusive node).
    whole = {"9": JobUsage(cpu_ns=400, cpus=2)}
    assert attribute_cpu(10_000, whole, node_busy_ns=500, ncpus=8, static_uj=6_000,
                         span_ns=1_000) == ({"9": 10_000}, 0)


def test_jobs_that_follow_each_other_each_pay_the_static_of_their_own_part():
    # Job 1 (2 of 8 CPUs) ends 300 ns in, job 2 (1 CPU) starts 600 ns in: each was alone on
    # the node then, so each pays the node's static power for its part; nobody the middle.
    usage = {"1": JobUsage(cpu_ns=0, cpus=2, alive_ns=300, alive_from_ns=0),
             "2": JobUsage(cpu_ns=0, cpus=1, alive_ns=400, alive_from_ns=600)}
    jobs, unattributed = attribute_cpu(10_000, usage, node_busy_ns=0, ncpus=8,
                                       static_uj=10_000, span_ns=1_000)
    parts = split_uj(10_000, {0: 300, 1: 300, 2: 400})
    assert jobs == {"1": parts[0], "2": parts[2]} and unattributed == parts[1]


def test_shared_node_static_weighs_cpus_by_time_alive():
    usage = {"1": JobUsage(cpu_ns=0, cpus=4), "2": JobUsage(cpu_ns=0, cpus=4, alive_ns=500)}
    jobs, unattributed = attribute_cpu(8_000, usage, node_busy_ns=0, ncpus=8,
                                       static_uj=8_000, span_ns=1_000)
    # Together for the first half (4 + 4 of 8 CPUs), job 1 alone for the second.
    halves = split_uj(8_000, {0: 500, 1: 500})
    together = split_uj(halves[0], {"1": 4, "2": 4, "": 0})
    assert jobs == {"1": together["1"] + halves[1], "2": together["2"]}
    assert unattributed == 0


@pytest.fixture
def node(tmp_path):
    return SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)


@pytest.fixture
def agent(tmp_path, node):
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1", interval_s=1,
        push_interval_s=3600, spool_dir=tmp_path / "spool", sysfs_root=node.sysfs_root,
        procfs_root=node.procfs_root, cgroup_root=node.cgroup_root, nvml="off",
        gpu_map_dir=tmp_path / "jobmap",
        cpu_static_power_w=1e6, dram_static_power_w=1e6,  # all of each delta is static
    )
    a = Agent(settings)
    yield a
    a.pusher.close()


def _pkg(interval):
    return next(s for s in interval.sources if s.source == "package-0")


def test_a_new_job_pays_from_its_cgroup_birth(agent, node):
    agent.tick()
    node.start_job("5", 1000, [0, 1])
    born_ns = os.stat(node.job_dir("5")).st_ctime_ns
    node.add_energy("package-0", 9_000_000)
    agent.tick()
    interval = agent._pending[-1]
    start_ns, end_ns = _ns(interval.start), _ns(interval.end)
    assert start_ns <= born_ns <= end_ns
    expected = split_uj(9_000_000, {"5": end_ns - born_ns, "": born_ns - start_ns})
    src = _pkg(interval)
    assert src.jobs_uj.get("5", 0) == expected["5"]
    assert src.unattributed_uj == expected[""]


def test_an_ended_job_pays_until_the_epilog_end_mark(agent, node, tmp_path):
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    node.start_job("6", 1000, [0, 1])
    (jobmap / "6").write_text("\nstart=1\n")
    agent.tick()
    prev_ns = _ns(agent._prev.wall)
    node.add_energy("package-0", 5_000_000)
    node.end_job("6")
    end_ns = prev_ns + 1  # the epilog ran right after the previous sample
    (jobmap / "6").write_text(f"\nstart=1\nend={end_ns / 1e9:.9f}\n")
    end_ns = read_job_map(jobmap)["6"].end_ns  # as parsed (float seconds)
    agent.tick()
    interval = agent._pending[-1]
    start, stop = _ns(interval.start), _ns(interval.end)
    expected = split_uj(5_000_000, {"6": max(0, end_ns - start), "": stop - max(end_ns, start)})
    assert _pkg(interval).jobs_uj.get("6", 0) == expected["6"]
    node.add_energy("package-0", 777)
    agent.tick()  # the map still lingers, but the job ended: nothing more for it
    later = _pkg(agent._pending[-1])
    assert later.jobs_uj == {} and later.unattributed_uj == 777


def test_learned_static_floor_ignores_counters_that_did_not_move():
    from jobenergy.agent.attribution import StaticFloor

    s_ns = 1_000_000_000
    floor = StaticFloor(None, window_ns=3 * s_ns)
    assert floor.static_uj(0, s_ns) == 0  # held: nothing learned
    floor.static_uj(12_000_000, s_ns)  # resumed inside this interval: not learned either
    for energy_uj in (31_000_000, 29_000_000, 30_000_000):  # jittering around 30 W
        floor.static_uj(energy_uj, s_ns)
    assert floor.learned_w == 30.0  # the window's mean, not its low 29 W
    assert floor.static_uj(0, s_ns) == 30_000_000  # still 30 W, not 0
    floor.static_uj(5_000_000, s_ns)
    for _ in range(3):
        floor.static_uj(25_000_000, s_ns)
    assert floor.learned_w == 25.0  # idler for a whole window: the new floor
    floor.static_uj(19_000_000, s_ns)
    assert floor.learned_w == 23.0  # one dip counts only within its window: (25+25+19)/3


def test_a_vanished_job_pays_until_its_cgroup_was_removed(agent, node):
    node.start_job("8", 1000, [0, 1])
    agent.tick()
    uid_dir = node.job_dir("8").parent
    node.add_energy("package-0", 6_000_000)
    node.end_job("8")  # no epilog mark: the removal itself tells the end
    removed_ns = os.stat(uid_dir).st_ctime_ns
    agent.tick()
    interval = agent._pending[-1]
    start, stop = _ns(interval.start), _ns(interval.end)
    assert start <= removed_ns <= stop
    expected = split_uj(6_000_000, {"8": removed_ns - start, "": stop - removed_ns})
    assert _pkg(interval).jobs_uj.get("8", 0) == expected["8"]
