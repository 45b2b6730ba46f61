"""Per-job energy limits in the agent (agent/energy_limits.py), without Slurm.

``scancel`` is a real executable script in a temp dir that appends its argv to a file: what
the agent runs is what a node would run, nothing in the code under test is patched.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobenergy.agent.daemon import Agent
from jobenergy.agent.energy_limits import EnergyLimits, node_share_uj, parse_record
from jobenergy.agent.jobmap import JobMapEntry, parse_job_map
from jobenergy.agent.records import SampledInterval, SourceSample
from jobenergy.agent.settings import AgentSettings
from jobenergy.core.errors import ConfigError
from jobenergy.sim.node import SimNode

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _limits(tmp_path: Path, scancel: object, **kw) -> EnergyLimits:
    return EnergyLimits(tmp_path / "limits", str(scancel), **kw)


def _interval(jobs_uj: dict[str, int], gpu_uj: dict[str, int] | None = None) -> SampledInterval:
    """One interval: package energy per job, and optionally a GPU's."""
    sources = [SourceSample("cpu", "package-0", sum(jobs_uj.values()), dict(jobs_uj), 0)]
    if gpu_uj:
        sources.append(SourceSample("gpu", "gpu/GPU-0", sum(gpu_uj.values()), dict(gpu_uj), 0))
    return SampledInterval(start=T0, end=T0, start_us=0, end_us=0, sources=sources)


def _run(limits: EnergyLimits, job_map: dict[str, JobMapEntry], *intervals) -> None:
    for interval in intervals:
        limits.observe(job_map, interval)
    assert limits.wait_idle(10)


LIMITED = {"42": JobMapEntry(energy_limit_uj=1_000_000_000, nodes=1)}


def test_warned_once_at_90_percent_then_cancelled_once_at_the_limit(tmp_path, scancel):
    limits = _limits(tmp_path, scancel)
    _run(limits, LIMITED, _interval({"42": 400_000_000}), _interval({"42": 400_000_000}))
    assert scancel.calls() == []  # 80 %
    # 90 %: CPU and GPU energy both count.
    _run(limits, LIMITED, _interval({"42": 50_000_000}, {"42": 50_000_000}))
    assert scancel.calls() == [["--signal=USR1", "--full", "42"]]
    _run(limits, LIMITED, _interval({"42": 50_000_000}))  # 95 %: nothing new
    assert len(scancel.calls()) == 1
    _run(limits, LIMITED, _interval({"42": 60_000_000}))  # 101 %
    assert scancel.calls()[1:] == [["--signal=TERM", "--full", "42"], ["42"]]
    _run(limits, LIMITED, _interval({"42": 60_000_000}), _interval({"42": 1}))
    assert len(scancel.calls()) == 3  # never twice
    record = parse_record((tmp_path / "limits" / "42").read_text())
    assert record is not None
    assert (record.warned_uj, record.cancelled_uj) == (900_000_000, 1_010_000_000)
    text = (tmp_path / "limits" / "42").read_text()
    assert text.index("warned_uj") < text.index("cancelled_uj")  # the epilog's order
    assert stat.S_IMODE((tmp_path / "limits" / "42").stat().st_mode) == 0o600
    samples = {(s.name, tuple(s.labels.values())): s.value
               for m in limits.actions.collect() for s in m.samples}
    assert samples[("jobenergy_agent_energy_limit_actions_total", ("warn",))] == 1
    assert samples[("jobenergy_agent_energy_limit_actions_total", ("cancel",))] == 1


def test_a_jump_past_the_limit_cancels_without_a_warning_first(tmp_path, scancel):
    limits = _limits(tmp_path, scancel)
    _run(limits, LIMITED, _interval({"42": 2_000_000_000}))
    assert scancel.calls() == [["--signal=TERM", "--full", "42"], ["42"]]


def test_warn_policy_signals_at_90_and_100_percent_and_lets_the_job_run(tmp_path, scancel):
    limits = _limits(tmp_path, scancel, policy="warn", warn_signal="USR2", warn_fraction=0.5)
    _run(limits, LIMITED, *[_interval({"42": 300_000_000})] * 6)
    assert scancel.calls() == [["--signal=USR2", "--full", "42"]] * 2
    record = parse_record((tmp_path / "limits" / "42").read_text())
    assert record is not None and record.exceeded_uj == 1_200_000_000
    assert record.cancelled_uj is None


def test_a_multi_node_job_gets_an_even_share_per_node(tmp_path, scancel):
    assert node_share_uj(1_000_000_001, 2) == 500_000_000
    limits = _limits(tmp_path, scancel)
    two = {"7": JobMapEntry(energy_limit_uj=1_000_000_000, nodes=2)}
    _run(limits, two, _interval({"7": 449_999_999}))
    assert scancel.calls() == []
    _run(limits, two, _interval({"7": 1}))  # 450 000 000 = 90 % of this node's half
    assert scancel.calls() == [["--signal=USR1", "--full", "7"]]


def test_only_limited_jobs_in_the_map_are_signalled(tmp_path, scancel):
    limits = _limits(tmp_path, scancel)
    job_map = {
        "42": JobMapEntry(),  # no limit
        "43": JobMapEntry(energy_limit_uj=10, end_ns=1),  # the epilog ran: over
        "1;reboot": JobMapEntry(energy_limit_uj=10),  # never a name Slurm makes
    }
    _run(limits, job_map, _interval({"42": 10**12, "43": 10**12, "1;reboot": 10**12,
                                     "44": 10**12}))
    assert scancel.calls() == []
    assert limits.scancel_failures._value.get() == 1  # the bad id's cancel: refused


def test_a_restarted_agent_resumes_and_never_signals_again(tmp_path, scancel):
    first = _limits(tmp_path, scancel)
    _run(first, LIMITED, _interval({"42": 950_000_000}))
    assert len(scancel.calls()) == 1
    second = _limits(tmp_path, scancel)  # a new agent over the same limit_dir
    _run(second, LIMITED, _interval({"42": 10_000_000}))
    assert len(scancel.calls()) == 1  # resumed at 960 000 000: warned already
    _run(second, LIMITED, _interval({"42": 40_000_000}))
    assert scancel.calls()[1:] == [["--signal=TERM", "--full", "42"], ["42"]]


def test_a_failing_scancel_is_counted_not_retried(tmp_path):
    missing = tmp_path / "no-scancel"
    limits = _limits(tmp_path, missing)
    _run(limits, LIMITED, _interval({"42": 2_000_000_000}), _interval({"42": 1}))
    assert limits.scancel_failures._value.get() == 1


def test_the_job_map_carries_the_limit_and_rejects_garbage():
    entry = parse_job_map("0,1\nstart=1796196766.6\nenergy_limit_uj=9000000000\nnodes=2\n")
    assert (entry.energy_limit_uj, entry.nodes, entry.gpus) == (9_000_000_000, 2, {0, 1})
    for bad in ("-5", "0", "1e9", "9" * 20, "3600000000000000001", " ", "١٢٣"):
        assert parse_job_map(f"\nenergy_limit_uj={bad}\n").energy_limit_uj is None, bad


def test_settings_refuse_a_relative_scancel_and_unknown_signals():
    assert AgentSettings(limit_warn_signal="sigusr2", node="n1").limit_warn_signal == "USR2"
    assert AgentSettings(node="n1").limit_dir == Path("/run/jobenergy/limits/n1")
    for bad in ({"scancel_path": "scancel"}, {"limit_warn_signal": "KILL; rm"},
                {"limit_policy": "explode"}, {"limit_warn_fraction": 1.5}):
        with pytest.raises(ConfigError):
            AgentSettings.load(node="n1", **bad)


def test_the_agent_cancels_a_job_at_its_limit_from_the_prolog_map(tmp_path, scancel):
    """Through the daemon's tick: the map the prolog writes, attribution, scancel."""
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1",
        interval_s=1, push_interval_s=3600, spool_dir=tmp_path / "spool",
        sysfs_root=node.sysfs_root, procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root, nvml="off", gpu_map_dir=tmp_path / "jobmap",
        limit_dir=tmp_path / "limits", scancel_path=str(scancel),
        cpu_static_power_w=0, dram_static_power_w=0)
    agent = Agent(settings)
    try:
        (tmp_path / "jobmap").mkdir()
        (tmp_path / "jobmap" / "5").write_text("\nstart=1.0\nenergy_limit_uj=20000000\nnodes=1\n")
        agent.tick()  # baseline
        node.start_job("5", 1000, [0, 1])
        for _ in range(4):  # alone on the node: 6 J of package energy a second is all its
            node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
            node.add_energy("package-0", 6_000_000)
            agent.tick()
        assert agent.energy_limits.wait_idle(10)
        # 18 J (90 %) after the third interval, 24 J (past 20 J) after the fourth.
        assert scancel.calls() == [["--signal=USR1", "--full", "5"],
                                   ["--signal=TERM", "--full", "5"], ["5"]]
        assert "cancelled_uj=24000000" in (tmp_path / "limits" / "5").read_text()
    finally:
        agent.pusher.close()
