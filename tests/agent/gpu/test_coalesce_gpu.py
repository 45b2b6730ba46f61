"""Stored intervals with GPUs: the same totals as one stored interval per sample.

Two agents (``store_interval_s`` = ``interval_s`` and 10 ×) sample one simulated node with
two GPUs (real pynvml over the simulated library) in lockstep on a simulated clock; the
collector must derive the same energy, GPU-seconds, covered seconds and phases from both.
"""

from __future__ import annotations

import gzip

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.core.schema import Batch
from jobenergy.sim.node import SimNode
from jobenergy.sim.nvml.state import STATE_ENV


def _agent(tmp_path, node, name, store_s):
    return Agent(AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1", interval_s=1,
        store_interval_s=store_s, push_interval_s=10, spool_dir=tmp_path / name,
        sysfs_root=node.sysfs_root, procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root, nvml="auto", gpu_map_dir=tmp_path / "jobmap",
        annotation_socket="",
    ))


def _intervals(spool_dir):
    return [
        i
        for p in sorted((spool_dir / "batches").iterdir())
        for i in Batch.model_validate_json(gzip.decompress(p.read_bytes())).intervals
    ]


def test_gpu_jobs_coming_and_going_keep_every_total(
    nvml_loaded, tmp_path, monkeypatch, clock, derived
):
    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=1, gpus=2)
    monkeypatch.setenv(STATE_ENV, str(node.nvml_state_path))
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()

    def start(job_id, gpu, cpus, util):
        node.start_job(job_id, 1000, cpus, gpus=[gpu])
        node.gpu_util[job_id] = util
        node._write_nvml()
        (jobmap / job_id).write_text(f"{gpu}\nstart={clock.time() - 0.5:.6f}\n")

    start("1", 0, [0, 1], 0.9)
    agents = [_agent(tmp_path, node, "one", 1), _agent(tmp_path, node, "ten", 10)]
    assert all(a.gpu is not None for a in agents)
    for a in agents:
        a.tick()
    for k in range(1, 60):
        if k == 8:
            start("2", 1, [2, 3], 0.5)
        if k == 15:
            for a in agents:
                a.phases.begin("2", "inference", "bert", clock.wall)
        if k == 20:  # job 1 ends inside the next sample; job 3 takes its GPU
            node.end_job("1")
            (jobmap / "1").write_text(f"0\nstart=1\nend={clock.time() + 0.3:.6f}\n")
        if k == 23:
            (jobmap / "1").unlink()
            start("3", 0, [0, 1], 0.7)
        if k == 41:
            node.gpu_util["3"] = 0.0  # idle on its GPU for a while
            node._write_nvml()
        for gpu in range(2):
            node.add_gpu_energy(gpu, 300_000 + 1_000 * k + gpu)  # mJ
        node.add_energy("package-0", 30_000_000 + k)
        node.add_energy("package-0/dram", 3_000_000)
        for job in list(node.jobs):
            node.add_cpu_time(job, 400_000_000 + k, 1_000_000_000)
        clock.advance(1)
        for a in agents:
            a.tick()
    for a in agents:
        a.seal()
        a.pusher.close()
        a.gpu.close()
    each, merged = _intervals(tmp_path / "one"), _intervals(tmp_path / "ten")
    assert len(merged) < len(each) / 2
    want = derived(each)
    assert derived(merged) == want
    gpu_jobs = {j for j, component, _ in want["job"] if component == "gpu"}
    assert gpu_jobs == {"1", "2", "3"}
    assert want["summary"]["2"][3] > 0  # GPU-seconds
