"""The agent's sample → attribute path on a simulated node tree (in process, no HTTP)."""

import gzip
import json

import pytest

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.core.version import VERSION
from jobenergy.sim.node import SimNode

SOURCES = ("package-0", "package-0/dram")


@pytest.fixture
def node(tmp_path):
    return SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)


@pytest.fixture
def agent(tmp_path, node):
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none",
        cluster="t",
        node="n1",
        interval_s=1,
        push_interval_s=3600,
        spool_dir=tmp_path / "spool",
        sysfs_root=node.sysfs_root,
        procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root,
        nvml="off",
        gpu_map_dir=tmp_path / "jobmap",
        cpu_static_power_w=0,
        dram_static_power_w=0,
    )
    a = Agent(settings)
    yield a
    a.pusher.close()


def _tick(agent):
    agent.tick()
    return agent._pending[-1] if agent._pending else None


def _by_source(interval):
    return {s.source: s for s in interval.sources}


def test_first_and_last_interval_of_a_job_count(agent, node):
    agent.tick()  # baseline
    node.start_job("5", 1000, [0, 1])
    node.add_cpu_time("5", 2_000_000_000, 1_000_000_000)
    node.add_energy("package-0", 9_000_000)
    first = _by_source(_tick(agent))["package-0"]
    assert first.jobs_uj == {"5": 9_000_000}  # new cgroup, alone: all of it
    node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
    node.add_energy("package-0", 4_000_001)
    node.end_job("5")  # vanishes before the next sample
    last = _tick(agent)
    assert _by_source(last)["package-0"].jobs_uj == {"5": 4_000_001}
    assert [(j.job_id, j.ended, j.cpu_time_us) for j in last.jobs] == [("5", True, 1_000_000)]
    node.add_energy("package-0", 777)
    idle = _by_source(_tick(agent))["package-0"]
    assert idle.jobs_uj == {} and idle.unattributed_uj == 777


def test_shared_node_split_by_cpu_time_with_os_share_unattributed(agent, node):
    node.start_job("1", 1000, [0, 1])
    node.start_job("2", 1001, [2, 3])
    agent.tick()
    node.add_cpu_time("1", 3_000_000_000, 0)
    node.add_cpu_time("2", 1_000_000_000, 0)
    node.add_cpu_time(None, 1_000_000_000, 1_000_000_000)  # the OS: 1 s, node wall 1 s
    node.add_energy("package-0", 10_000_000)
    src = _by_source(_tick(agent))["package-0"]
    # static power configured 0 → all by CPU time: 3/5, 1/5, OS 1/5 (/proc/stat in 10 ms ticks)
    assert src.jobs_uj == {"1": 6_000_000, "2": 2_000_000}
    assert src.unattributed_uj == 2_000_000


def test_wrap_is_counted_and_core_zone_never_added(tmp_path):
    from jobenergy.sim.node import RAPL_MAX_RANGE_UJ

    node = SimNode(
        tmp_path / "w", "n1", ncpus=4, packages=1, energy_start_uj=RAPL_MAX_RANGE_UJ - 10
    )
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none",
        cluster="t",
        node="n1",
        spool_dir=tmp_path / "s",
        sysfs_root=node.sysfs_root,
        procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root,
        nvml="off",
        gpu_map_dir=tmp_path / "jobmap",
    )
    agent = Agent(settings)
    agent.tick()
    node.add_energy("package-0", 25)
    interval = _tick(agent)
    src = _by_source(interval)["package-0"]
    assert (src.measured_uj, src.wraps) == (25, 1)
    assert set(_by_source(interval)) == {"package-0", "package-0/dram"}  # no "core"
    agent.pusher.close()


def test_unreadable_zone_carries_energy_to_the_next_interval(agent, node):
    agent.tick()
    node.add_energy("package-0", 1_000)
    zone = node.sysfs_root / "class/powercap/intel-rapl:0/energy_uj"
    value = zone.read_text()
    zone.unlink()
    zone.mkdir()  # reading a directory fails even as root
    broken = _tick(agent)
    assert "package-0" not in _by_source(broken)
    zone.rmdir()
    zone.write_text(value)
    node.add_energy("package-0", 500)
    assert _by_source(_tick(agent))["package-0"].measured_uj == 1_500


def test_seal_writes_a_valid_batch_with_increasing_seq(agent, node):
    agent.settings.store_interval_s = agent.settings.interval_s  # one stored per sampled
    agent.tick()
    for _ in range(3):
        node.add_energy("package-0", 10)
        agent.tick()
    agent.seal()
    node.add_energy("package-0", 10)
    agent.tick()
    agent.seal()
    from jobenergy.core.schema import Batch

    batches = [
        Batch.model_validate(json.loads(gzip.decompress(b.path.read_bytes())))
        for b in agent.spool.pending()
    ]
    assert batches[1].seq == batches[0].seq + 1
    assert [len(b.intervals) for b in batches] == [3, 1]
    total = sum(
        s.measured_uj
        for b in batches
        for i in b.intervals
        for s in i.sources
        if s.source == "package-0"
    )
    assert total == 40


def test_a_vanished_dram_zone_does_not_stop_the_package(agent, node):
    import shutil

    agent.tick()
    shutil.rmtree(node.sysfs_root / "class/powercap/intel-rapl:0:0")
    node.counters_uj.pop("package-0/dram")
    node.add_energy("package-0", 3_000)
    src = _by_source(_tick(agent))
    assert src["package-0"].measured_uj == 3_000
    assert "package-0/dram" not in src


def test_wall_clock_step_back_keeps_intervals_ordered(agent, node):
    from datetime import timedelta

    agent.tick()
    agent.tick()
    agent._prev.wall += timedelta(seconds=60)  # as if the clock had just stepped back 60 s
    agent.tick()
    first, second = agent._pending[-2:]
    assert second.start == first.end + timedelta(seconds=60)
    assert second.end > second.start


def test_job_shorter_than_one_interval_is_charged_via_the_prolog_map(agent, node, tmp_path):
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    agent.tick()
    (jobmap / "77").write_text("")  # the prolog announces job 77 (no GPUs)
    node.start_job("77", 1000, [0])
    node.add_cpu_time("77", 300_000_000, 300_000_000)
    node.add_energy("package-0", 2_000_000)
    node.end_job("77")  # gone before any sample saw its cgroup
    src = _by_source(_tick(agent))["package-0"]
    assert src.jobs_uj == {"77": 2_000_000} and src.unattributed_uj == 0


def test_an_announced_job_without_cpu_time_does_not_disturb_the_split(agent, node, tmp_path):
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    node.start_job("5", 1000, [0, 1])
    agent.tick()
    (jobmap / "78").write_text("")  # announced, its cgroup not made yet
    node.add_cpu_time("5", 100_000_000, 100_000_000)
    node.add_energy("package-0", 1_000)
    assert _by_source(_tick(agent))["package-0"].jobs_uj == {"5": 1_000}


def test_step_cpu_time_goes_on_the_wire_and_energy_is_not_split(agent, node):
    agent.tick()  # baseline
    node.start_job("7", 1000, [0, 1])
    node.add_cpu_time("7", 1_000_000_000, 1_000_000_000)  # the batch step
    node.add_step_cpu_time("7", "0", 3_000_000_000)
    node.add_energy("package-0", 8_000_000)
    interval = _tick(agent)
    (job,) = interval.jobs
    assert job.step_cpu_us == {"batch": 1_000_000, "0": 3_000_000}  # new steps: all of it
    assert job.cpu_time_us == 4_000_000
    assert _by_source(interval)["package-0"].jobs_uj == {"7": 8_000_000}  # job level only

    node.add_step_cpu_time("7", "0", 2_000_000_000)
    node.add_energy("package-0", 1_000_000)
    (job,) = _tick(agent).jobs
    assert job.step_cpu_us == {"0": 2_000_000}  # deltas; idle steps left out

    node.add_step_cpu_time("7", "0", 500_000_000)
    node.end_step("7", "0")  # vanishes within the interval: skipped, job keeps its time
    node.add_cpu_time("7", 250_000_000)
    node.add_energy("package-0", 1_000_000)
    (job,) = _tick(agent).jobs
    assert job.step_cpu_us == {"batch": 250_000}
    assert job.cpu_time_us == 750_000


def test_metrics_are_served_over_http(agent, node):
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent.metrics.serve(port)
    agent.tick()
    node.add_energy("package-0", 1_234_567)
    agent.tick()
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "jobenergy_agent_samples_total 2.0" in text
    # Joules at exposition, from integer µJ: one exact division, no float accumulation.
    measured = 'jobenergy_agent_measured_energy_joules_total{component="cpu",source="package-0"}'
    assert f"{measured} 1.234567" in text
    assert "# TYPE jobenergy_agent_measured_energy_joules_total counter" in text
    assert "# TYPE jobenergy_agent_unattributed_energy_joules_total counter" in text
    for counter in ("spool_dropped_batches", "push_failures", "gpu_errors", "batches_sent"):
        assert f"# TYPE jobenergy_agent_{counter}_total counter" in text
    assert "jobenergy_agent_spool_dropped_batches_total 0.0" in text
    assert f'jobenergy_build_info{{version="{VERSION}"}} 1.0' in text
    assert "jobenergy_agent_last_push_success_timestamp_seconds 0.0" in text
    assert "_created" not in text


def _spooled(agent):
    from jobenergy.core.schema import Batch

    bodies = [b.path.read_bytes() for b in agent.spool.pending()]
    return bodies, [Batch.model_validate_json(gzip.decompress(b)) for b in bodies]


def test_batches_are_split_below_max_batch_bytes(agent, node):
    # Issue 9: one batch over the collector's body limit is refused whole, costing every job
    # of the node its energy; the agent spreads the intervals over batches instead.
    agent.settings.max_batch_bytes = 4096
    agent.settings.store_interval_s = agent.settings.interval_s  # one stored per sampled
    for j in range(6):
        node.start_job(str(100 + j), 1000, [j])
    agent.tick()
    for _ in range(30):
        node.add_energy("package-0", 1_000)
        for j in range(6):
            node.add_cpu_time(str(100 + j), 1_000_000, 1_000_000)
        agent.tick()
    queued = list(agent._pending)
    agent.seal()
    bodies, batches = _spooled(agent)
    assert len(batches) > 1
    assert max(len(gzip.decompress(b)) for b in bodies) <= 4096  # so the gzip body too
    assert [b.seq for b in batches] == list(range(batches[0].seq, batches[0].seq + len(batches)))
    sent = [i for b in batches for i in b.intervals]
    assert [(i.start, i.end) for i in sent] == [(i.start, i.end) for i in queued]
    assert sum(s.measured_uj for i in sent for s in i.sources if s.source == "package-0") == 30_000


def test_an_interval_too_large_alone_keeps_its_energy_and_loses_its_phases(agent, node):
    from datetime import UTC, datetime

    agent.settings.max_batch_bytes = 8192
    agent.tick()
    big = {f"k{n}": "v" * 255 for n in range(64)}  # ~17 KB of JSON: within the wire limits
    agent.phases.begin("7", "training", "m", datetime.now(UTC), tags=big)
    assert agent.phases.end("7", datetime.now(UTC))
    node.add_energy("package-0", 5_000)
    agent.tick()
    agent.seal()
    bodies, batches = _spooled(agent)
    assert max(len(gzip.decompress(b)) for b in bodies) <= 8192
    [interval] = [i for b in batches for i in b.intervals]
    assert interval.phases == [] and _by_source(interval)["package-0"].measured_uj == 5_000
    assert agent.metrics.registry.get_sample_value("jobenergy_agent_phases_dropped_total") == 1
