"""SIGTERM stops a real agent process within 10 s whatever the collector does.

The collector here is a socket that accepts connections and never answers (a hung server):
the agent must not wait out its request timeouts, and what was not acknowledged must stay in
the spool for the next start.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from jobenergy.sim.node import SimNode
from jobenergy.sim.processes import start_agent, write_agent_config


def test_agent_exits_within_10s_with_a_hanging_collector(tmp_path):
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    hung.settimeout(60)
    port = hung.getsockname()[1]
    spool = tmp_path / "spool"
    cfg = write_agent_config(
        tmp_path / "agent.toml", collector_url=f"http://127.0.0.1:{port}", auth="none", cluster="t",
        node="n1", interval_s=0.2, push_interval_s=0.2, spool_dir=str(spool),
        sysfs_root=str(node.sysfs_root), procfs_root=str(node.procfs_root),
        cgroup_root=str(node.cgroup_root), nvml="off", gpu_map_dir=str(tmp_path / "map"),
        annotation_socket="",
    )
    log = tmp_path / "agent.log"
    proc = start_agent(cfg, log)
    conns = []
    try:
        conns.append(hung.accept()[0])  # the agent's first push is now in flight, unanswered
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"agent still running 15 s after SIGTERM; log {log}") from None
        took_s = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
        hung.close()
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()
    assert took_s < 10, (took_s, log.read_text())
    from jobenergy.agent.spool import Spool

    assert Spool(spool, 1 << 30).pending(), "unacknowledged batches must stay spooled"
