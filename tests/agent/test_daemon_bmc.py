"""The agent with a real IPMI BMC (ipmi_sim): reconciled records on a simulated node."""

from __future__ import annotations

import pytest

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.agent.wire import interval_json
from jobenergy.core.schema import Interval
from jobenergy.sim.bmc import ipmi as ipmi_emu
from jobenergy.sim.node import SimNode


@pytest.fixture
def bmc(ipmi_bmc):
    return ipmi_bmc


def _agent(tmp_path, bmc, node, **extra):
    creds = tmp_path / "bmc.cred"
    creds.write_text(f"{ipmi_emu.USER}:{ipmi_emu.PASSWORD}\n")
    creds.chmod(0o600)
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1", interval_s=1,
        push_interval_s=3600, spool_dir=tmp_path / "spool", sysfs_root=node.sysfs_root,
        procfs_root=node.procfs_root, cgroup_root=node.cgroup_root, nvml="off",
        gpu_map_dir=tmp_path / "jobmap", cpu_static_power_w=0, dram_static_power_w=0,
        bmc="ipmi", bmc_url=f"lanplus://127.0.0.1:{bmc.port}", bmc_credentials_file=creds,
        bmc_ipmi_cipher_suite=3, **extra)
    return Agent(settings)


def _sources(agent):
    return [s for rec in agent._pending for s in rec.sources]


def test_wall_power_above_the_counters_becomes_other_for_the_job(tmp_path, bmc):
    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)
    agent = _agent(tmp_path, bmc, node)
    try:
        node.start_job("5", 1000, [0, 1, 2, 3])
        agent.tick()  # counters' baseline
        bmc.set_power_w(3000)  # far above what RAPL will measure
        assert agent.bmc.poll_once() is not None
        node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
        node.add_energy("package-0", 5_000_000)
        agent.tick()  # the BMC's baseline answer
        for _ in range(3):
            node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
            node.add_energy("package-0", 5_000_000)
            agent.tick()
            assert agent.bmc.poll_once() is not None  # a BMC window closes at the next tick
        node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
        node.add_energy("package-0", 5_000_000)
        agent.tick()
        sources = _sources(agent)
        bmc_uj = sum(s.measured_uj for s in sources if s.component == "bmc")
        other = [s for s in sources if s.component == "other"]
        assert bmc_uj > 0
        other_uj = sum(s.measured_uj for s in other)
        # Every window: measured + other == BMC; the job alone gets all of other.
        measured_in_windows = bmc_uj - other_uj
        # Windows close at ticks 4, 5 and 6: samples 3..6 fall in them (tick 2 took the baseline)
        assert measured_in_windows == 20_000_000
        assert sum(s.jobs_uj.get("5", 0) for s in other) == other_uj
        assert agent.reconciler.windows_total == 3
        assert all(s.estimated for s in other)
        for rec in agent._pending:  # what goes on the wire is what the collector accepts
            fields = {"start": rec.start, "end": rec.end,
                      "sources": [s.wire() for s in rec.sources],
                      "jobs": [j.wire() for j in rec.jobs], "phases": []}
            Interval.model_validate_json(interval_json(fields))
    finally:
        agent.pusher.close()


def test_bmc_below_the_counters_is_flagged_and_costs_the_job_nothing(tmp_path, bmc):
    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)
    agent = _agent(tmp_path, bmc, node)
    try:
        node.start_job("5", 1000, [0, 1])
        agent.tick()
        bmc.set_power_w(0)  # a broken BMC: 0 W
        agent.bmc.poll_once()
        agent.tick()
        node.add_energy("package-0", 50_000_000)
        agent.bmc.poll_once()
        agent.tick()
        sources = _sources(agent)
        assert any(s.source == "bmc/flagged" for s in sources)
        assert sum(s.measured_uj for s in sources if s.component == "other") == 0
        assert agent.reconciler.flagged_total == 1
        assert agent.reconciler.windows_total == 1
    finally:
        agent.pusher.close()


def test_credentials_readable_by_others_are_refused(tmp_path, bmc):
    from jobenergy.core.errors import ConfigError

    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)
    creds = tmp_path / "bmc.cred"
    creds.write_text("admin:pw\n")
    creds.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        Agent(AgentSettings(
            collector_url="http://127.0.0.1:9", auth="none", node="n1",
            spool_dir=tmp_path / "spool", sysfs_root=node.sysfs_root,
            procfs_root=node.procfs_root, cgroup_root=node.cgroup_root, nvml="off",
            bmc="ipmi", bmc_url=f"lanplus://127.0.0.1:{bmc.port}",
            bmc_credentials_file=creds))
    assert "pw" not in str(caught.value).replace(str(creds), "")
