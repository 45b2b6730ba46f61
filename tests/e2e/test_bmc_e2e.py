"""The whole node, end to end: emulated hardware + a real IPMI BMC → agent → collector → API.

A simulated node (:class:`~jobenergy.sim.node.SimNode`: cgroups, procfs, one job holding every
CPU and its GPU) under the hardware emulator (:mod:`jobenergy.sim.hwemu`: RAPL and NVML at
constant idle power, plus ``overhead_w`` only the wall sees), whose wall power feeds Debian's
``ipmi_sim`` (:mod:`jobenergy.sim.bmc.ipmi`), read by a real agent process over IPMI LAN.

The hardware is held (no energy, 0 W at the wall) while the agent takes its BMC baseline,
runs for ``RUN_WINDOWS`` BMC windows, and is held again until the agent has closed windows
past it: every µJ the counters measured then lies in a closed window, and the BMC's energy
differs from the emulator's exact wall energy only by how the BMC integrates the two power
steps (a trapezoid over the window around each step: at most that window's BMC energy) and
the emulator's tick around each step. So, from the scenario alone:

* measured == the emulator's ledger, exactly; bmc == its wall energy ± that bound;
* other == bmc − measured exactly (per window too: none is flagged, as the wall is four
  times the counters), ≈ overhead_w × the run;
* the job holds every CPU and the GPU alone, so it gets all of it: its ``other`` is the
  node's, ``quality.bmc_reconciled`` is true and ``senergy -o OtherkWh`` prints it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from jobenergy.core.units import UJ_PER_KWH
from jobenergy.sim.bmc import ipmi as ipmi_emu
from jobenergy.sim.bmc.windows import windows
from jobenergy.sim.hwemu import HardwareEmulator, PowerModel
from jobenergy.sim.node import SimNode
from jobenergy.sim.nvml.build import build_libnvml
from jobenergy.sim.nvml.state import STATE_ENV
from jobenergy.sim.processes import free_port, start_agent, start_server, stop, write_agent_config

CLUSTER = "bmc"
NODE = "n1"
JOB = "301"
INTERVAL_S = 0.2
BMC_INTERVAL_S = 1.0
BMC_TIMEOUT_S = 1.0
EMU_HZ = 20.0
RUN_WINDOWS = 10
#: Idle package + DRAM + one idle GPU (PowerModel defaults: 20 + 3 + 60 W) and what only the
#: wall sees: whole watts, as DCMI reports them, so the BMC is told the model's power exactly.
MODEL = PowerModel(overhead_w=250.0)
MEASURED_W = MODEL.cpu_idle_w + MODEL.dram_idle_w + MODEL.gpu_idle_w
WALL_W = MEASURED_W + MODEL.overhead_w


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _metric(port: int, name: str) -> float:
    """Return one sample of the agent's /metrics (-1 when absent or unreachable)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1


@pytest.fixture
def bmc(ipmi_bmc):
    return ipmi_bmc


class Hardware:
    """The emulator in a thread; records when it handed the BMC a power (its ticks)."""

    def __init__(self, root, node: SimNode, bmc) -> None:
        self.root = root
        self.ticks_mono: list[float] = []
        root.mkdir(parents=True, exist_ok=True)
        (root / "hold").touch()  # start held: nothing flows before the agent's baselines

        def wall_power(_node: str, watts: float) -> None:
            bmc.set_power_w(round(watts))
            self.ticks_mono.append(time.monotonic())

        self.emu = HardwareEmulator(root, [node.name], gpus=1, cgroup_root=node.cgroup_root,
                                    procfs_root=node.procfs_root, model=MODEL,
                                    wall_power=wall_power)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.emu.run, args=(self.stop, EMU_HZ),
                                       daemon=True)

    def hold(self, held: bool) -> None:
        """Hold or release the hardware; return once a tick has applied it (0 W or the model)."""
        seen = len(self.ticks_mono)
        if held:
            (self.root / "hold").touch()
        else:
            (self.root / "hold").unlink()
        # The tick running now may have read the old state: the one after it has the new.
        _wait_for(lambda: len(self.ticks_mono) >= seen + 2, 10, "two emulator ticks")

    def max_tick_gap_s(self) -> float:
        t = self.ticks_mono
        return max((b - a for a, b in zip(t, t[1:], strict=False)), default=0.0)


@pytest.fixture
def node_setup(tmp_path, pg_fresh_url, bmc):
    libnvml_dir = build_libnvml(tmp_path / "nvml").parent
    node = SimNode(tmp_path / "node", NODE, ncpus=8, packages=1)
    hw = Hardware(tmp_path / "hw", node, bmc)
    bmc.set_power_w(0)
    hw.thread.start()
    _wait_for(lambda: (tmp_path / "hw" / NODE / "sys").exists(), 10, "the emulator")
    port = free_port()
    server = start_server(pg_fresh_url, port, tmp_path / "server.log")
    creds = tmp_path / "bmc.cred"
    creds.write_text(f"{ipmi_emu.USER}:{ipmi_emu.PASSWORD}\n")
    creds.chmod(0o600)
    metrics_port = free_port()
    config = write_agent_config(
        tmp_path / "agent.toml", collector_url=f"http://127.0.0.1:{port}", auth="none",
        cluster=CLUSTER, node=NODE, interval_s=INTERVAL_S,
        store_interval_s=INTERVAL_S,  # nothing merged: the stored intervals are the sampled ones
        push_interval_s=0.5, spool_dir=str(tmp_path / "spool"),
        sysfs_root=str(tmp_path / "hw" / NODE / "sys"),
        procfs_root=str(tmp_path / "hw" / NODE / "proc"),
        cgroup_root=str(node.cgroup_root), nvml="auto", gpu_map_dir=str(tmp_path / "gpumap"),
        metrics_port=metrics_port, bmc="ipmi", bmc_url=f"lanplus://127.0.0.1:{bmc.port}",
        bmc_credentials_file=str(creds), bmc_ipmi_cipher_suite=3,
        bmc_interval_s=BMC_INTERVAL_S, bmc_timeout_s=BMC_TIMEOUT_S)
    node.start_job(JOB, 1000, list(range(8)), gpus=[0])  # before the agent: alive throughout
    env = {"LD_LIBRARY_PATH": str(libnvml_dir),
           STATE_ENV: str(tmp_path / "hw" / NODE / "nvml.state")}
    agent = start_agent(config, tmp_path / "agent.log", env)
    state = {"node": node, "hw": hw, "agent": agent, "api": f"http://127.0.0.1:{port}",
             "metrics_port": metrics_port, "db": pg_fresh_url, "tmp": tmp_path}
    yield state
    stop(agent)
    stop(server)
    hw.stop.set()
    hw.thread.join(10)


def _stored_intervals(db_url: str) -> list[dict[tuple[str, str], int]]:
    """Return the node's stored intervals in time order: (component, source) → µJ."""
    from sqlalchemy import create_engine, func, select

    from jobenergy.collector.models import EnergyInterval as Ei

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Ei.start_at, Ei.component, Ei.source, func.sum(Ei.energy_uj))
                .where(Ei.cluster == CLUSTER, Ei.node == NODE)
                .group_by(Ei.start_at, Ei.component, Ei.source).order_by(Ei.start_at)).all()
    finally:
        engine.dispose()
    out: dict = {}
    for start_at, component, source, energy_uj in rows:
        out.setdefault(start_at, {})[(component, source)] = int(energy_uj)
    return [out[k] for k in sorted(out)]


def test_bmc_other_from_the_wall_to_senergy(node_setup):
    s = node_setup
    hw, port = s["hw"], s["metrics_port"]
    windows_metric = "jobenergy_agent_bmc_windows_total"
    began = datetime.now(UTC)
    # The BMC's baseline and a first (0 W) window, with the job seen, before anything flows.
    _wait_for(lambda: _metric(port, windows_metric) >= 1
              and _metric(port, "jobenergy_agent_jobs") == 1, 60, "the agent's BMC baseline")
    errors_before = _metric(port, 'jobenergy_agent_sensor_errors_total{sensor="bmc"}')
    hw.hold(False)
    released = _metric(port, windows_metric)
    _wait_for(lambda: _metric(port, windows_metric) >= released + RUN_WINDOWS,
              RUN_WINDOWS * (BMC_INTERVAL_S + BMC_TIMEOUT_S) + 30, "the run's BMC windows")
    hw.hold(True)
    held = _metric(port, windows_metric)
    # A window closed later read its end after the hold: 0 W, no more energy. Two more: the
    # step-down window and one after it, so every measured µJ is in a closed window.
    _wait_for(lambda: _metric(port, windows_metric) >= held + 2, 30, "windows after the hold")
    bmc_errors = _metric(port, 'jobenergy_agent_sensor_errors_total{sensor="bmc"}') - errors_before
    s["node"].end_job(JOB)
    samples = _metric(port, "jobenergy_agent_samples_total")
    _wait_for(lambda: _metric(port, "jobenergy_agent_samples_total") >= samples + 2, 30,
              "samples after the job's end")
    api = s["api"]
    for event, when in (("start", began), ("end", datetime.now(UTC))):
        httpx.post(f"{api}/api/v1/jobs/events", timeout=10, json={
            "cluster": CLUSTER, "job_id": JOB, "event": event, "time": int(when.timestamp()),
            "user": "alice", "account": "ml", "nodes": [NODE]}).raise_for_status()
    assert stop(s["agent"]) == 0
    assert list((s["tmp"] / "spool" / "batches").glob("*.json.gz")) == []

    ledger = hw.emu.nodes[0]
    measured_uj = sum(ledger.added_uj.values())  # package + DRAM + GPU, exact
    overhead_uj = ledger.wall_uj - measured_uj
    assert measured_uj > 0 and overhead_uj > 0

    # Every window, rebuilt from the stored intervals: measured + other == BMC exactly.
    rebuilt = windows(_stored_intervals(s["db"]))
    assert rebuilt.before_uj == 0 and rebuilt.after_uj == 0  # all inside closed windows
    assert rebuilt.closed and not any(w.flagged for w in rebuilt.closed)
    for w in rebuilt.closed:
        assert w.measured_uj + w.other_uj == w.bmc_uj, w
    # The BMC integrates each power step as a trapezoid over the window around it: its
    # error there is at most half that window at the wall power, which is that window's own
    # BMC energy (power 0 at one end); the emulator's tick around each step adds at most a
    # tick at the wall power; a failed read (timed out) lengthens a window by one interval.
    step_windows_uj = rebuilt.closed[0].bmc_uj + rebuilt.closed[-1].bmc_uj
    tolerance_uj = step_windows_uj + WALL_W * 1e6 * (
        2 * hw.max_tick_gap_s() + bmc_errors * (BMC_INTERVAL_S + BMC_TIMEOUT_S))

    rec = httpx.get(f"{api}/api/v1/nodes/{NODE}/reconciliation", timeout=10, params={
        "cluster": CLUSTER, "start": (began - timedelta(hours=1)).isoformat(),
        "end": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}).json()
    assert rec["measured_uj"] == measured_uj
    assert rec["flagged_intervals"] == 0 and rec["covered"]
    assert rec["other_uj"] == rec["bmc_uj"] - rec["measured_uj"]  # conservation, exact
    assert rec["bmc_uj"] == sum(w.bmc_uj for w in rebuilt.closed)
    assert abs(rec["bmc_uj"] - ledger.wall_uj) <= tolerance_uj, (rec, ledger.wall_uj)
    assert abs(rec["other_uj"] - overhead_uj) <= tolerance_uj
    assert rec["ratio"] == pytest.approx(ledger.wall_uj / measured_uj,
                                         abs=tolerance_uj / measured_uj)
    assert rec["other_kwh"] == rec["other_uj"] / UJ_PER_KWH

    # The job held every CPU and the GPU alone: all measured energy and all of other are its.
    job = httpx.get(f"{api}/api/v1/jobs/{JOB}", params={"cluster": CLUSTER}, timeout=10).json()
    gpu_uj = sum(v for k, v in ledger.added_uj.items() if k.startswith("gpu/"))
    assert job["by_component"] == {
        "cpu": ledger.added_uj["package-0"], "dram": ledger.added_uj["package-0/dram"],
        "gpu": gpu_uj, "other": rec["other_uj"]}
    assert job["energy_uj"] == rec["bmc_uj"]  # the job's share of the wall: all of it
    assert job["quality"]["bmc_reconciled"] and job["quality"]["bmc_nodes"] == [NODE]
    assert "other" in job["quality"]["estimated_components"]

    out = subprocess.run(
        [sys.executable, "-m", "jobenergy.cli.senergy", "--url", api, "-M", CLUSTER, "-j", JOB,
         "-X", "-o", "JobID,OtherkWh", "-P"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["JobID|OtherkWh", f"{JOB}|{rec['other_uj'] / UJ_PER_KWH:.6f}"]
