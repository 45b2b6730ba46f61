"""The agent's stored intervals (``store_interval_s``) on a simulated node.

Two agents sample the same simulated node in lockstep on a simulated clock, one storing each
sampled interval (``store_interval_s`` = ``interval_s``), one merging them (10 ×): they read
the same files at the same times, so they attribute the same sampled intervals, and what
the collector derives from their batches must be the same (``derived``, conftest.py).
"""

from __future__ import annotations

import gzip
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.core.errors import ConfigError
from jobenergy.core.schema import Batch, Interval
from jobenergy.sim.node import RAPL_MAX_RANGE_UJ, SimNode


def _settings(tmp_path, node, name, store_s, **extra) -> AgentSettings:
    return AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1", interval_s=1,
        store_interval_s=store_s, push_interval_s=10, spool_dir=tmp_path / name,
        sysfs_root=node.sysfs_root, procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root, nvml="off", gpu_map_dir=tmp_path / "jobmap",
        annotation_socket="", **extra,
    )


def _spooled(spool_dir) -> tuple[list[bytes], list[Interval]]:
    bodies = [gzip.decompress(p.read_bytes()) for p in sorted((spool_dir / "batches").iterdir())]
    intervals = []
    for body in bodies:
        batch = Batch.model_validate_json(body)
        # The agent writes its intervals without the models (agent/wire.py): their bytes.
        sent = body[body.index(b'"intervals":') + len(b'"intervals":'):-1]
        assert sent == f"[{','.join(i.model_dump_json() for i in batch.intervals)}]".encode()
        intervals += batch.intervals
    return bodies, intervals


def _told_by_a_collector(agent: Agent) -> Agent:
    """Hand the agent a collector's answer to a batch, as its pusher does (the collector's
    own answer model: it names the optional fields it stores)."""
    from jobenergy.collector.routes import IngestResponse

    agent.pusher.on_accepted(IngestResponse(duplicate=False, records=0).model_dump_json()
                             .encode())
    return agent


@pytest.mark.parametrize("answered", [False, True], ids=["no-answer-yet", "step_uj-accepted"])
def test_merged_intervals_give_the_collector_the_same_totals(tmp_path, clock, derived, answered):
    told = _told_by_a_collector if answered else (lambda agent: agent)
    node = SimNode(
        tmp_path / "n", "n1", ncpus=8, packages=1, energy_start_uj=RAPL_MAX_RANGE_UJ - 90_000_000
    )
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    one = Agent(_settings(tmp_path, node, "one", 1))
    ten = told(Agent(_settings(tmp_path, node, "ten", 10)))
    agents = [one, ten]

    def both(do):
        for agent in agents:
            do(agent)

    node.start_job("1", 1000, [0, 1])
    (jobmap / "1").write_text(f"\nstart={clock.time() - 100:.6f}\n")
    both(Agent.tick)
    for k in range(1, 75):
        if k == 5:  # a job starts mid-window, announced by the prolog a bit before
            node.start_job("2", 1001, [2, 3])
            (jobmap / "2").write_text(f"\nstart={clock.time() + 0.4:.6f}\n")
        if k == 12:  # a phase begins, mid-sample
            both(lambda a: a.phases.begin("1", "training", "resnet", clock.wall + timedelta(
                seconds=0.3), samples=10))
        if k == 20:  # a job with two busy steps (merged only with the split: step_uj)
            node.start_job("3", 1002, [4, 5])
        if k == 31:
            both(lambda a: a.phases.end("1", clock.wall + timedelta(seconds=0.8), samples=500,
                                        metrics={"acc": 0.5}))
        if k == 40:  # job 2 ends inside the last sample: the epilog's mark tells when
            node.end_job("2")
            (jobmap / "2").write_text(f"\nstart=1\nend={clock.time() + 0.6:.6f}\n")
        if k == 45:  # a job shorter than a sample: only the prolog map saw it
            (jobmap / "4").write_text(f"\nstart={clock.time() + 0.2:.6f}\n"
                                      f"end={clock.time() + 0.7:.6f}\n")
            node.start_job("4", 1003, [6])
            node.add_cpu_time("4", 300_000_000, 300_000_000)
            node.end_job("4")
        if k == 47:
            (jobmap / "2").unlink()
            (jobmap / "4").unlink()
        if k == 50:  # the agents restart; what the node uses meanwhile is a gap interval
            both(Agent.seal)
            both(lambda a: a.pusher.close())
            node.add_energy("package-0", 77_000_000)
            node.add_energy("package-0/dram", 7_000_000)
            clock.advance(6.5)
            one = Agent(_settings(tmp_path, node, "one", 1))
            ten = told(Agent(_settings(tmp_path, node, "ten", 10)))
            agents = [one, ten]
        node.add_energy("package-0", 20_000_000 + 1_000 * k)
        node.add_energy("package-0/dram", 2_000_000 + k)
        node.add_cpu_time("1", 800_000_000 + k, 1_000_000_000)
        if 5 <= k < 40:
            node.add_cpu_time("2", 500_000_000 + 3 * k)
        if k == 30:
            node.end_job("3")
        if 20 <= k < 30:
            node.add_cpu_time("3", 100_000_000 + k)  # its batch step
            node.add_step_cpu_time("3", "0", 600_000_000 - k)
        node.add_cpu_time(None, 50_000_000, 0)  # the OS
        clock.advance(1 + (k % 3) * 0.001)
        both(Agent.tick)
    both(Agent.seal)
    both(lambda a: a.pusher.close())

    _, each = _spooled(tmp_path / "one")
    _, merged = _spooled(tmp_path / "ten")
    assert len(merged) < len(each) / 3
    assert merged[0].start == each[0].start and merged[-1].end == each[-1].end
    got, want = derived(merged), derived(each)
    assert got == want
    # The scenario did what it says: a wrap, a gap, an hour, phases, steps, short jobs.
    assert sum(s.wraps for i in each for s in i.sources) >= 1
    assert any(not i.jobs and i.sources and i.sources[0].jobs_uj == {} for i in each)
    assert len(want["hours"]) >= 4
    assert {k[1] for k in want["phases"]} == {"training"}
    assert {(j, s) for j, s, _ in want["steps"]} >= {("3", "0"), ("3", "batch"), ("1", "batch")}
    assert {"2", "4"} <= {j for j, _, _ in want["job"]}
    # Job 3's ten seconds of two busy steps: ten stored intervals, or about one with step_uj.
    with_3 = [i for i in merged if any(j.job_id == "3" for j in i.jobs)]
    carried = [j.step_uj for i in with_3 for j in i.jobs if j.job_id == "3"]
    if answered:
        assert len(with_3) <= 3 and any(carried)
    else:
        assert len(with_3) >= 10 and not any(carried)


def test_a_stored_interval_too_large_for_a_batch_is_stored_as_its_samples(
    tmp_path, clock, derived, monkeypatch
):
    unmerged = []
    stored_json = Agent._stored_json

    def spy(self, stored, budget_bytes):
        texts = stored_json(self, stored, budget_bytes)
        if len(stored.records) > 1 and len(texts) > 1:
            unmerged.append(len(texts))
        return texts

    monkeypatch.setattr(Agent, "_stored_json", spy)
    node = SimNode(tmp_path / "n", "n1", ncpus=128, packages=1)
    (tmp_path / "jobmap").mkdir()
    small = {"max_batch_bytes": 4096}
    one = Agent(_settings(tmp_path, node, "one", 1, **small))
    ten = Agent(_settings(tmp_path, node, "ten", 10, **small))
    for agent in (one, ten):
        agent.tick()
    for k in range(30):  # new jobs every sample: a merged interval holds them all
        for i in range(4):
            if k:
                node.end_job(str(1000 + 4 * (k - 1) + i))
            node.start_job(str(1000 + 4 * k + i), 1000 + k, [4 * k + i])
            node.add_cpu_time(str(1000 + 4 * k + i), 10_000_000)
        node.add_energy("package-0", 1_000_000)
        clock.advance(1)
        for agent in (one, ten):
            agent.tick()
    for agent in (one, ten):
        agent.seal()
        agent.pusher.close()
    bodies, merged = _spooled(tmp_path / "ten")
    assert max(len(b) for b in bodies) <= 4096
    assert unmerged, "a merged interval was too large and stored as its samples"
    _, each = _spooled(tmp_path / "one")
    assert derived(merged) == derived(each)


def test_held_samples_are_sealed_with_the_first_batch_after_they_are_complete(tmp_path, clock):
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    agent = Agent(_settings(tmp_path, node, "s", 10))
    agent.tick()
    for _ in range(9):
        node.add_energy("package-0", 1_000)
        clock.advance(1)
        agent.tick()
    assert agent.spool.pending() == [] and len(agent._pending) == 9  # 9 s: still merging
    node.add_energy("package-0", 1_000)
    clock.advance(1)
    agent.tick()  # 10 s: complete, and a batch is due (push_interval_s = 10)
    _, intervals = _spooled(tmp_path / "s")
    assert [(i.end - i.start).total_seconds() for i in intervals] == [10.0]
    assert agent._pending == []
    agent.pusher.close()


def test_a_crash_while_samples_are_held_loses_no_energy(tmp_path, clock):
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    node.start_job("7", 1000, [0, 1])
    first = Agent(_settings(tmp_path, node, "s", 10))
    first.tick()
    added = 0
    for k in range(14):  # one stored interval sealed, four samples held
        node.add_energy("package-0", 1_000_000 + k)
        node.add_cpu_time("7", 900_000_000)
        added += 1_000_000 + k
        clock.advance(1)
        first.tick()
    assert len(first._pending) == 4
    first.pusher.close()  # killed: no final sample, no seal
    node.add_energy("package-0", 555)
    added += 555
    clock.advance(3)
    second = Agent(_settings(tmp_path, node, "s", 10))
    second.tick()
    second.seal()
    second.pusher.close()
    _, intervals = _spooled(tmp_path / "s")
    pkg = [s for i in intervals for s in i.sources if s.source == "package-0"]
    assert sum(s.measured_uj for s in pkg) == added
    gap = intervals[-1]  # the held samples and the downtime: measured, no job's
    held_uj = sum(1_000_000 + k for k in range(10, 14))
    assert gap.jobs == [] and gap.sources[0].unattributed_uj == held_uj + 555
    assert [i.end for i in intervals[:-1]][-1] == gap.start


def test_store_interval_settings(tmp_path):
    base = {"collector_url": "http://127.0.0.1:9", "auth": "none", "node": "n1",
            "spool_dir": tmp_path}
    assert AgentSettings(**base).store_interval_s == 10.0
    assert AgentSettings(**base, interval_s=30).store_interval_s == 30  # an older config
    assert AgentSettings(**base, interval_s=2, store_interval_s=2).store_interval_s == 2
    with pytest.raises(ValueError, match="store_interval_s"):
        AgentSettings(**base, interval_s=5, store_interval_s=2)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nnode = "n1"\ninterval_s = 2.0\nstore_interval_s = 1.0\n')
    with pytest.raises(ConfigError, match="store_interval_s"):
        AgentSettings.load(cfg)


def test_sigterm_spools_the_samples_still_merging(tmp_path):
    """A real agent process: energy of samples not yet stored is sealed on SIGTERM."""
    from jobenergy.sim.processes import free_port, start_agent, write_agent_config

    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    spool = tmp_path / "spool"
    port = free_port()
    cfg = write_agent_config(
        tmp_path / "agent.toml", collector_url="http://127.0.0.1:9", auth="none", cluster="t",
        node="n1", interval_s=0.2, store_interval_s=30.0, push_interval_s=0.2,
        spool_dir=str(spool), sysfs_root=str(node.sysfs_root),
        procfs_root=str(node.procfs_root), cgroup_root=str(node.cgroup_root), nvml="off",
        gpu_map_dir=str(tmp_path / "map"), annotation_socket="", metrics_port=port,
    )
    log = tmp_path / "agent.log"
    proc = start_agent(cfg, log)
    try:
        deadline = time.monotonic() + 60
        while "agent started" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # The counters' baseline is taken, then the energy is sampled (held, not spooled).
        base = _wait_samples(port, 2, proc, log)
        node.add_energy("package-0", 123_456_789)
        node.add_energy("package-0/dram", 4_321)
        _wait_samples(port, base + 2, proc, log)
        held = list((spool / "batches").glob("*.json.gz"))
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"agent still running after SIGTERM; log {log}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()
    assert held == [], "30 s stored intervals: nothing is spooled before SIGTERM"
    _, intervals = _spooled(spool)
    totals = {}
    for interval in intervals:
        for src in interval.sources:
            totals[src.source] = totals.get(src.source, 0) + src.measured_uj
    assert totals == {"package-0": 123_456_789, "package-0/dram": 4_321}, log.read_text()
    assert len(intervals) == 1


def test_a_spool_that_cannot_write_keeps_the_stored_intervals(tmp_path, clock, monkeypatch):
    from jobenergy.agent.spool import Spool
    from jobenergy.core.errors import SpoolError

    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    agent = Agent(_settings(tmp_path, node, "s", 10))
    agent.tick()
    for _ in range(12):
        node.add_energy("package-0", 1_000)
        clock.advance(1)
        agent.tick()
    real_seal = Spool.seal

    def full(self, *args, **kwargs):
        raise SpoolError("disk full")

    monkeypatch.setattr(Spool, "seal", full)
    with pytest.raises(SpoolError):
        agent.seal()
    monkeypatch.setattr(Spool, "seal", real_seal)
    agent.seal()
    agent.pusher.close()
    _, intervals = _spooled(tmp_path / "s")
    assert sum(s.measured_uj for i in intervals for s in i.sources if s.source == "package-0") \
        == 12_000


def _wait_samples(port: int, at_least: int, proc: Any, log: Path) -> int:
    """Wait until the agent's own /metrics counts ``at_least`` samples; return the count."""
    import re

    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            m = re.search(r"^jobenergy_agent_samples_total ([0-9.e+]+)$", text, re.M)
            count = int(float(m.group(1))) if m else -1
        except httpx.HTTPError:
            count = -1
        if count >= at_least:
            return count
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
