"""In-job phase annotations: client → unix socket → agent, identity from the kernel."""

import json
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
        collector_url="http://127.0.0.1:9", auth="none",
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

    agent.annotations = AnnotationServer(
        sock, node.procfs_root, agent.phases, cgroup_root=node.cgroup_root, metrics=agent.metrics
    )
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


# -- issue 9: what one job sends can never cost other jobs their energy ---------------------


def _raw(body: bytes) -> dict:
    """Send raw bytes (what a hostile or buggy client may send) and return the answer."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(os.environ["JOBENERGY_SOCKET"])
        try:
            sock.sendall(body + b"\n")
        except BrokenPipeError:
            pass  # refused at accept: the answer is already there
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"op": "end", "metrics": {"loss": NaN}}', "finite number"),
        (b'{"op": "end", "metrics": {"loss": Infinity}}', "finite number"),
        (b'{"op": "end", "metrics": {"loss": 1e999}}', "finite number"),
        (b'{"op": "begin", "phase": "training", "time": NaN}', "finite number"),
        (b'{"op": "begin", "phase": "training", "tags": {"a": "x\\u0000y"}}', "tags.a"),
        (b'{"op": "begin", "phase": "training", "tags": {"a\\u0000": "x"}}', "tags"),
        (b'{"op": "begin", "phase": "training", "model": "a\\nb"}', "model"),
        (b'{"op": "begin", "phase": "training", "model": "a\\u009bb"}', "model"),
        (b'{"op": "begin", "phase": "training", "model": "\\ud800"}', "JSON"),
        (b'{"op": "begin", "phase": "training", "model": "\xff"}', "JSON"),
        (b'{"op": "begin", "phase": "training", "samples": 1000000000000001}', "samples"),
        (b'{"op": "begin", "phase": "training", "tags": {"k": "' + b"v" * 256 + b'"}}', "tags.k"),
        (b'{"op": "begin", "phase": "train\\u0000ing"}', "phase"),
    ],
)
def test_annotations_the_wire_would_refuse_are_refused_at_the_socket(setup, body, problem):
    node, agent = setup
    _become_job(node, "47")
    answer = _raw(body)
    assert answer["ok"] is False and "bad annotation" in answer["error"]
    assert problem in answer["error"]
    assert agent.phases.held("47") == 0


def test_the_largest_accepted_annotation_is_a_valid_wire_record(setup):
    from jobenergy.agent.wire import phase_json
    from jobenergy.core.schema import PhaseRecord

    node, agent = setup
    _become_job(node, "48")
    agent.tick()
    tags = {f"{n:02d}" + "k" * 62: "é" * 255 for n in range(64)}
    begin = {"op": "begin", "phase": "other", "model": "m" * 255, "samples": 10**15, "tags": tags}
    assert _raw(json.dumps(begin, ensure_ascii=False).encode())["ok"]
    metrics = {f"{n:02d}" + "k" * 62: -1.7976931348623157e308 for n in range(64)}
    send({"op": "end", "metrics": metrics})
    agent.tick()
    [record] = [r for i in agent._pending for r in i.phases]
    text = phase_json(record.wire())  # what the agent sends: the model's own bytes
    assert PhaseRecord.model_validate(record.wire()).model_dump_json() == text
    assert PhaseRecord.model_validate_json(text).tags == record.tags


def test_client_refuses_nan_and_control_characters_with_a_clear_error(setup, caplog):
    node, agent = setup
    _become_job(node, "49")
    with phase("training", model="m") as p:
        p.metrics["loss"] = float("nan")
    assert "metric 'loss' is nan: only finite numbers" in caplog.text
    with pytest.raises(AnnotationError, match="control character"):
        send({"op": "begin", "phase": "training", "tags": {"a": "x\x00"}})
    with pytest.raises(AnnotationError, match="finite"):
        with phase("inference", strict=True) as p:
            p.metrics["acc"] = float("inf")


def test_phases_are_capped_per_job_and_a_flood_stays_bounded():
    from datetime import UTC, datetime, timedelta

    from jobenergy.agent.phases import (
        MAX_PHASES_PER_INTERVAL,
        MAX_SEGMENTS_PER_JOB,
        PhaseBook,
        PhaseLimitError,
    )

    book = PhaseBook()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    refused = 0
    for n in range(10_000):  # a flood inside one interval: the held segments stay capped
        try:
            book.begin("flood", "training", None, t0 + timedelta(microseconds=n))
        except PhaseLimitError:
            refused += 1
    book.begin("calm", "inference", None, t0)
    book.end("calm", t0 + timedelta(seconds=1))
    assert book.held("flood") == MAX_SEGMENTS_PER_JOB and refused == 10_000 - MAX_SEGMENTS_PER_JOB
    # One interval carries at most MAX_PHASES_PER_INTERVAL, jobs taking turns: the calm job's
    # phase is not stuck behind the flood.
    sent = book.pop_finished()
    assert len(sent) == MAX_PHASES_PER_INTERVAL and ("calm" in {j for j, _ in sent})
    # Sent segments that can label no later interval are forgotten: room again.
    later = t0 + timedelta(seconds=2)
    for _ in range(10):
        book.pop_finished()
        book.forget({"flood", "calm"}, before=later)
    assert book.held("calm") == 0 and book.held("flood") == 1  # the open one
    book.begin("flood", "other", None, later)


def test_a_job_over_its_message_rate_is_refused_and_others_are_served(setup, monkeypatch):
    from jobenergy.agent.annotations import MESSAGE_BURST_PER_JOB, MESSAGES_PER_S_PER_JOB

    node, agent = setup
    # The bucket's clock, moved only here: on a loaded machine the 70 round trips may take
    # long enough for the bucket to refill more than the few messages a bound could allow.
    now = [1000.0]
    rate = agent.annotations._rate
    monkeypatch.setattr(rate, "allow", lambda key, _s, allow=rate.allow: allow(key, now[0]))
    _become_job(node, "50")
    answers = [_raw(b'{"op": "end"}') for _ in range(MESSAGE_BURST_PER_JOB + 30)]
    slowed = [a for a in answers if "slow down" in a.get("error", "")]
    assert len(answers) - len(slowed) == MESSAGE_BURST_PER_JOB
    assert all("slow down" in a.get("error", "") for a in answers[MESSAGE_BURST_PER_JOB:])
    now[0] += 1.5 / MESSAGES_PER_S_PER_JOB  # one message's worth of refill (and a half)
    assert "slow down" not in _raw(b'{"op": "end"}').get("error", "")
    assert "slow down" in _raw(b'{"op": "end"}').get("error", "")
    counted = agent.metrics.registry.get_sample_value(
        "jobenergy_agent_annotations_refused_total", {"reason": "rate"}
    )
    _become_job(node, "51")
    assert send({"op": "begin", "phase": "training"})["job_id"] == "51"
    assert counted == len(slowed) + 1  # the burst's refusals and the one after the refill


def test_a_job_holds_at_most_its_share_of_connections(setup):
    import socket
    import time

    from jobenergy.agent.annotations import MAX_CONNECTIONS_PER_JOB

    node, agent = setup
    _become_job(node, "52")
    slow = []
    for _ in range(MAX_CONNECTIONS_PER_JOB):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(os.environ["JOBENERGY_SOCKET"])
        s.sendall(b'{"op": ')  # and never finishes
        slow.append(s)
    deadline = time.monotonic() + 30
    while agent.annotations.active_connections("52") < MAX_CONNECTIONS_PER_JOB:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(AnnotationError, match="connections open"):
        send({"op": "begin", "phase": "training"})
    _become_job(node, "53")
    assert send({"op": "begin", "phase": "training"})["job_id"] == "53"
    assert time.monotonic() - started < 1.0
    for s in slow:
        s.close()


def test_a_peer_that_does_not_own_the_job_cannot_annotate_it(setup, tmp_path):
    """Real SO_PEERCRED: a process running as another uid in job 54's cgroup is refused."""
    import shutil
    import stat
    import subprocess
    import tempfile

    if os.geteuid() != 0:
        message = "needs root to run a client as another uid (CI runs as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    python = shutil.which("python3", path="/usr/bin:/bin")
    node, _ = setup
    job = node.start_job("54", 1000, [0])
    # The socket where other uids can reach it (pytest's tmp_path is root's, 0700).
    public = tempfile.mkdtemp(prefix="jobenergy-sock-")
    os.chmod(public, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    from jobenergy.agent.annotations import AnnotationServer

    server = AnnotationServer(f"{public}/agent.sock", node.procfs_root, _.phases,
                              cgroup_root=node.cgroup_root)
    server.start()
    client = "\n".join([
        "import socket, sys",
        "sys.stdin.readline()",
        "s = socket.socket(socket.AF_UNIX)",
        f"s.connect({public + '/agent.sock'!r})",
        "try: s.sendall(b'{\"op\": \"begin\", \"phase\": \"training\"}\\n')",
        "except BrokenPipeError: pass",
        "print(s.recv(4096).decode())",
    ])
    cgroup = (node.procfs_root / str(job.pid) / "cgroup").read_text()
    try:
        answers = {}
        for uid in (1001, 1000):
            proc = subprocess.Popen([python, "-c", client], user=uid, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, cwd="/")
            (node.procfs_root / str(proc.pid)).mkdir(parents=True, exist_ok=True)
            (node.procfs_root / str(proc.pid) / "cgroup").write_text(cgroup)
            answers[uid] = proc.communicate("go\n", timeout=20)[0]
    finally:
        server.stop()
        shutil.rmtree(public, ignore_errors=True)
    assert "uid 1001 does not own job 54" in answers[1001]
    assert '"ok": true' in answers[1000]


def test_phase_names_are_the_wire_schemas():
    from typing import get_args

    from jobenergy import client
    from jobenergy.agent import phases
    from jobenergy.core.schema import Phase

    assert phases.PHASES == client.PHASES == get_args(Phase)
