"""Energy burnt while the agent is stopped reaches the node's unattributed account."""

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.sim.node import SimNode


def _agent(tmp_path, node):
    return Agent(
        AgentSettings(
            collector_url="http://127.0.0.1:9", auth="none",
            cluster="t",
            node="n1",
            spool_dir=tmp_path / "s",
            sysfs_root=node.sysfs_root,
            procfs_root=node.procfs_root,
            cgroup_root=node.cgroup_root,
            nvml="off",
            gpu_map_dir=tmp_path / "jobmap",
            annotation_socket="",
        )
    )


def test_restart_in_same_boot_sends_the_gap_as_unattributed(tmp_path):
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    first = _agent(tmp_path, node)
    first.tick()
    node.add_energy("package-0", 100)
    first.tick()
    first.seal()
    first.pusher.close()
    node.start_job("9", 1000, [0])
    node.add_energy("package-0", 5_000)  # burnt while no agent ran, a job was there
    node.add_energy("package-0/dram", 70)
    second = _agent(tmp_path, node)
    second.tick()
    (gap,) = second._pending
    by_source = {s.source: s for s in gap.sources}
    assert by_source["package-0"].measured_uj == 5_000
    assert by_source["package-0"].unattributed_uj == 5_000 and by_source["package-0"].jobs_uj == {}
    assert by_source["package-0/dram"].measured_uj == 70
    second.pusher.close()


def test_after_a_reboot_nothing_is_resumed(tmp_path):
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    first = _agent(tmp_path, node)
    first.tick()
    node.add_energy("package-0", 100)
    first.tick()
    first.seal()
    first.pusher.close()
    (node.procfs_root / "sys/kernel/random/boot_id").write_text("another-boot\n")
    second = _agent(tmp_path, node)
    second.tick()
    assert second._pending == []
    second.pusher.close()
