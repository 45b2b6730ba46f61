"""A Redfish BMC that hangs or answers garbage while the agent samples (its own loop).

The BMC is read in its own thread (agent/bmc_poller.py): a BMC that hangs must never delay
a sample, and failed reads only lengthen a BMC window, so every window the agent spools still
conserves exactly: measured + other == BMC.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.agent.spool import Spool
from jobenergy.sim.bmc.windows import windows
from jobenergy.sim.node import SimNode

INTERVAL_S = 0.1
BMC_INTERVAL_S = 0.5
#: Long next to a sample: a sampler waiting on the BMC would miss samples for this long.
BMC_TIMEOUT_S = 10.0
SAMPLES_WHILE_HUNG = 5
GARBAGE_READS = 3
POWER_DOC = "/redfish/v1/Chassis/1U/Power"


class RedfishBmc:
    """A stdlib HTTP server with a chassis' legacy Power document, and modes to misbehave."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok | hang | garbage
        self.watts = 400
        self.hanging = threading.Event()  # a request is held in the handler now
        self.release = threading.Event()
        self.garbage_served = 0
        bmc = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == POWER_DOC and bmc.mode == "hang":
                    bmc.hanging.set()
                    bmc.release.wait(30)
                body = json.dumps(bmc.doc(self.path)).encode()
                if self.path == POWER_DOC and bmc.mode == "garbage":
                    bmc.garbage_served += 1
                    body = b'{"PowerControl": [{"PowerConsumedWatts": "NaN"}]' + b"[" * 1000
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the agent timed out on a hung request and left
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def doc(self, path: str) -> object:
        return {
            "/redfish/v1/Chassis": {"Members": [{"@odata.id": "/redfish/v1/Chassis/1U"}]},
            "/redfish/v1/Chassis/1U": {"Power": {"@odata.id": POWER_DOC}},
            POWER_DOC: {"PowerControl": [{"PowerConsumedWatts": self.watts}]},
        }.get(path, {})

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def bmc():
    server = RedfishBmc()
    yield server
    server.close()


def test_a_hanging_or_garbled_redfish_bmc_never_stalls_sampling_nor_conservation(tmp_path, bmc):
    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=1)
    agent = Agent(AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1",
        interval_s=INTERVAL_S, store_interval_s=INTERVAL_S, push_interval_s=3600,
        spool_dir=tmp_path / "spool", sysfs_root=node.sysfs_root, procfs_root=node.procfs_root,
        cgroup_root=node.cgroup_root, nvml="off", gpu_map_dir=tmp_path / "jobmap",
        cpu_static_power_w=0, dram_static_power_w=0, bmc="redfish", bmc_url=bmc.url,
        bmc_interval_s=BMC_INTERVAL_S, bmc_timeout_s=BMC_TIMEOUT_S))
    samples = agent.metrics.samples
    errors = agent.metrics.sensor_errors.labels("bmc")
    reconciler = agent.reconciler
    assert reconciler is not None
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    node.start_job("7", 1000, [0, 1, 2, 3])

    def burn() -> None:  # the job's CPU and energy, far below 400 W × a BMC window
        node.add_cpu_time("7", 400_000_000, 100_000_000)
        node.add_energy("package-0", 3_000_007)
        node.add_energy("package-0/dram", 1_000_003)

    loop.start()
    try:
        _wait_for(lambda: reconciler.windows_total >= 2, 30, "BMC windows")
        burn()
        # Hung: the read is held in the server; samples go on meanwhile.
        bmc.mode = "hang"
        _wait_for(bmc.hanging.is_set, 30, "a hung Redfish request")
        hung_at = samples._value.get()
        _wait_for(lambda: samples._value.get() >= hung_at + SAMPLES_WHILE_HUNG,
                  BMC_TIMEOUT_S / 2, "samples while the BMC hangs (the sampler waits on it?)")
        assert bmc.hanging.is_set() and not bmc.release.is_set()
        burn()
        # Garbled answers: failed reads, counted; samples still go on.
        bmc.mode = "garbage"
        bmc.release.set()
        errors_at, samples_at = errors._value.get(), samples._value.get()
        _wait_for(lambda: bmc.garbage_served >= GARBAGE_READS
                  and errors._value.get() >= errors_at + GARBAGE_READS, 30, "garbled reads")
        assert samples._value.get() > samples_at
        burn()
        # Good again, at another power: windows close again, across the failed reads.
        bmc.watts, bmc.mode = 650, "ok"
        windows_at = reconciler.windows_total
        _wait_for(lambda: reconciler.windows_total >= windows_at + 2, 30, "BMC windows again")
        burn()
        _wait_for(lambda: reconciler.windows_total >= windows_at + 4, 30, "the last windows")
    finally:
        stop.set()
        loop.join(BMC_TIMEOUT_S + 10)
        agent.pusher.close()
    assert not loop.is_alive()

    spool = Spool(tmp_path / "spool")
    intervals = []
    for batch in spool.pending():
        intervals += json.loads(gzip.decompress(spool.read(batch)))["intervals"]
    intervals.sort(key=lambda i: i["start"])
    sums = []
    for interval in intervals:
        sources = {}
        for src in interval["sources"]:
            assert sum(src["jobs_uj"].values()) + src["unattributed_uj"] == src["measured_uj"]
            key = (src["component"], src["source"])
            sources[key] = sources.get(key, 0) + src["measured_uj"]
        sums.append(sources)
    rebuilt = windows(sums)
    assert rebuilt.before_uj == 0 and rebuilt.after_uj == 0  # energy only between windows
    assert len(rebuilt.closed) >= 4 and not any(w.flagged for w in rebuilt.closed)
    for w in rebuilt.closed:
        assert w.measured_uj + w.other_uj == w.bmc_uj, w
    measured_uj = sum(node.added_uj.values())
    assert sum(w.measured_uj for w in rebuilt.closed) == measured_uj
    assert reconciler.flagged_total == 0
