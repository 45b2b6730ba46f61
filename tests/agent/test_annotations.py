"""In-job phase annotations: client → unix socket → agent, identity from the kernel."""

import os

import pytest

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.client import AnnotationError, phase, send
from jobenergy.sim.node import SimNode


@pytest.fixture
def setup(tmp_path, monkeypatch):
    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)
    sock = tmp_path / "agent.sock"
    monkeypatch.setenv("JOBENERGY_SOCKET", str(sock))
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9",
        cluster="t",
        node="n1",
        spool_dir=tmp_path / "s",
        sysfs_root=node.sysfs_root,
        procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root,
        nvml="off",
        gpu_map_dir=tmp_path / "jobmap",
        annotation_socket=str(sock),
    )
    agent = Agent(settings)
    from jobenergy.agent.annotations import AnnotationServer

    agent.annotations = AnnotationServer(sock, node.procfs_root, agent.phases)
    agent.annotations.start()
    yield node, agent
    agent.annotations.stop()
    agent.pusher.close()


def _become_job(node: SimNode, job_id: str) -> None:
    """Make this test process look, in the simulated /proc, like a task of ``job_id``."""
    job = node.start_job(job_id, 1000, [0, 1])
    proc = node.procfs_root / str(os.getpid())
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cgroup").write_text((node.procfs_root / str(job.pid) / "cgroup").read_text())


def test_a_process_outside_any_job_is_refused(setup):
    with pytest.raises(AnnotationError, match="not inside a Slurm job"):
        send({"op": "begin", "phase": "training"})


def test_phases_label_intervals_and_are_reported_with_samples(setup):
    node, agent = setup
    _become_job(node, "42")
    agent.tick()
    with phase("training", model="resnet50", samples=50_000, strict=True) as p:
        assert p.job_id == "42"
        node.add_energy("package-0", 1_000_000)
        agent.tick()
        p.metrics["accuracy"] = 0.75
    node.add_energy("package-0", 1_000_000)
    agent.tick()
    training, after = agent._pending[-2:]
    assert [(j.job_id, j.phase, j.model) for j in training.jobs] == [("42", "training", "resnet50")]
    assert [(r.job_id, r.phase, r.samples, r.metrics) for r in after.phases] == [
        ("42", "training", 50_000, {"accuracy": 0.75})
    ]


def test_bad_phase_is_refused_by_client_and_agent(setup):
    node, _ = setup
    _become_job(node, "43")
    with pytest.raises(ValueError, match="phase must be one of"):
        with phase("finetuning"):
            pass
    with pytest.raises(AnnotationError, match="phase must be one of"):
        send({"op": "begin", "phase": "finetuning"})
    with pytest.raises(AnnotationError, match="no open phase"):
        send({"op": "end"})


def test_client_without_agent_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JOBENERGY_SOCKET", str(tmp_path / "nobody.sock"))
    with phase("inference", model="bert"):
        pass
    assert "not recorded" in caplog.text


def test_bad_and_slow_clients_do_not_take_the_socket_down(setup):
    import socket
    import time

    node, _ = setup
    _become_job(node, "44")
    with pytest.raises(AnnotationError, match="tags"):
        send({"op": "begin", "phase": "training", "tags": [1]})
    with pytest.raises(AnnotationError, match="model"):
        send({"op": "begin", "phase": "training", "model": "m" * 300})
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(os.environ["JOBENERGY_SOCKET"])
    slow.sendall(b'{"op": ')  # and never finishes
    started = time.monotonic()
    assert send({"op": "begin", "phase": "training"})["job_id"] == "44"
    assert time.monotonic() - started < 1.0
    slow.close()


def test_numpy_like_metrics_never_crash_the_job(setup):
    from decimal import Decimal

    node, agent = setup
    _become_job(node, "45")
    with phase("inference", model="bert") as p:
        p.metrics["accuracy"] = Decimal("0.5")
        p.samples = 10
    agent.tick()
    agent.tick()
    records = [r for i in agent._pending for r in i.phases]
    assert [(r.job_id, r.metrics) for r in records] == [("45", {"accuracy": 0.5})]


def test_a_job_killed_inside_a_phase_gets_its_phase_closed(setup):
    node, agent = setup
    _become_job(node, "46")
    agent.tick()
    send({"op": "begin", "phase": "training", "model": "gpt"})
    agent.tick()
    node.end_job("46")
    agent.tick()
    agent.tick()
    records = [r for i in agent._pending for r in i.phases]
    assert [(r.job_id, r.phase, r.model) for r in records] == [("46", "training", "gpt")]
    assert agent.phases._segments == {}
