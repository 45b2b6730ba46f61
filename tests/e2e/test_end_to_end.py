"""Agent processes → HTTP → collector → API → senergy, with exact µJ.

The scenario is built so that the expected attribution follows from the scenario alone,
whatever the agents' sampling instants: energy is added in steps only while a job's cgroup
exists alone on its node (the job gets all of it) or while no job exists and none existed
for several sample intervals (the node's unattributed account). Phases last several sample
intervals so every job is seen by at least one sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from jobenergy.core.units import UJ_PER_KWH
from jobenergy.sim.node import RAPL_MAX_RANGE_UJ, SimNode
from jobenergy.sim.nvml.build import build_libnvml
from jobenergy.sim.nvml.state import STATE_ENV
from jobenergy.sim.processes import free_port, start_agent, start_server, stop, write_agent_config

INTERVAL_S = 0.2
PHASE_S = 4 * INTERVAL_S
SOURCES = ("package-0", "package-0/dram", "package-1", "package-1/dram")


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Scenario:
    """Two simulated nodes and the energy they were given, per job and per node."""

    def __init__(self, root: Path):
        # n1 starts 5.5 J below the RAPL range: the 5 J idle burn stays below it, the first
        # job burn passes it (a wrap inside job 101).
        self.n1 = SimNode(
            root / "n1",
            "n1",
            ncpus=16,
            packages=2,
            energy_start_uj=RAPL_MAX_RANGE_UJ - 5_500_000,
            gpus=2,
        )
        self.n2 = SimNode(root / "n2", "n2", ncpus=16, packages=2)
        self.job_uj: dict[str, dict[str, int]] = {}
        self.unattributed_uj: dict[str, dict[str, int]] = {"n1": {}, "n2": {}}

    def burn(self, node: SimNode, job_id: str | None, joules: int) -> None:
        """Add energy to every source of ``node`` and book it to ``job_id`` (None: idle)."""
        for i, source in enumerate(SOURCES):
            energy_uj = joules * 1_000_000 + 7 * i + 1  # odd amounts: no accidental symmetry
            book = self.job_uj.setdefault(job_id, {}) if job_id else self.unattributed_uj[node.name]
            book[source] = book.get(source, 0) + energy_uj
            node.add_energy(source, energy_uj)
        if job_id:
            node.add_cpu_time(job_id, int(PHASE_S * 1e9) * 4, int(PHASE_S * 1e9))

    def burn_gpu(self, node: SimNode, index: int, job_id: str | None, energy_mj: int) -> None:
        """Advance one GPU's NVML counter and book it to ``job_id`` (None: unattributed)."""
        source = f"gpu/{node.nvml.devices[index].uuid}"
        book = self.job_uj.setdefault(job_id, {}) if job_id else self.unattributed_uj[node.name]
        book[source] = book.get(source, 0) + energy_mj * 1000
        node.add_gpu_energy(index, energy_mj)


def component_of(source: str) -> str:
    if source.startswith("gpu/"):
        return "gpu"
    return "dram" if source.endswith("/dram") else "cpu"


@pytest.fixture(scope="module")
def libnvml_dir(tmp_path_factory):
    return build_libnvml(tmp_path_factory.mktemp("nvml")).parent


@pytest.fixture
def cluster(tmp_path, pg_fresh_url, libnvml_dir):
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    scenario = Scenario(tmp_path / "nodes")
    agents = {}
    metrics_ports = {}
    for node in (scenario.n1, scenario.n2):
        metrics_ports[node.name] = free_port()
        config = write_agent_config(
            tmp_path / f"{node.name}.toml",
            collector_url=api,
            auth="none",
            cluster="e2e",
            node=node.name,
            interval_s=INTERVAL_S,
            push_interval_s=0.5,
            spool_dir=str(tmp_path / "spool" / node.name),
            sysfs_root=str(node.sysfs_root),
            procfs_root=str(node.procfs_root),
            cgroup_root=str(node.cgroup_root),
            nvml="auto",
            gpu_map_dir=str(tmp_path / "gpumap" / node.name),
            annotation_socket=str(tmp_path / f"{node.name}.sock"),
            metrics_port=metrics_ports[node.name],
        )
        env = {"LD_LIBRARY_PATH": str(libnvml_dir), STATE_ENV: str(node.nvml_state_path)}
        agents[node.name] = start_agent(config, tmp_path / f"agent-{node.name}.log", env)
    state = {
        "agents": agents,
        "server": None,
        "api": api,
        "port": port,
        "tmp": tmp_path,
        "scenario": scenario,
        "db": pg_fresh_url,
        "metrics_ports": metrics_ports,
    }
    yield state
    for proc in agents.values():
        stop(proc)
    if state["server"] is not None:
        stop(state["server"])


def _samples(port: int) -> int:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith("jobenergy_agent_samples_total "):
            return int(float(line.split()[1]))
    return -1


def settle(cluster) -> None:
    """Wait until every agent has taken two more samples: one wholly after the last change.

    Phases are separated by the agents' own samples, not by sleeps, so a loaded machine
    cannot merge two phases into one interval.
    """
    ports = cluster["metrics_ports"]
    before = {name: _samples(port) for name, port in ports.items()}
    _wait_for(
        lambda: all(_samples(p) >= max(before[n], 0) + 2 for n, p in ports.items()),
        60,
        "the agents' next samples",
    )


def _run_scenario(cluster) -> Scenario:
    s: Scenario = cluster["scenario"]
    tmp = cluster["tmp"]
    # The agents start while the collector is down: they must spool and deliver later.
    for name in ("n1", "n2"):
        _wait_for(
            lambda n=name: (tmp / "spool" / n / "state.json").exists(),
            30,
            f"agent {name} to take its first samples",
        )
    s.burn(s.n1, None, 5)
    s.burn(s.n2, None, 2)
    settle(cluster)
    s.burn_gpu(s.n1, 0, None, 2_000)
    s.burn_gpu(s.n1, 1, None, 3_000)
    settle(cluster)
    s.n1.start_job("101", 5001, list(range(8)), gpus=[1])  # starts between two samples
    s.n2.start_job("202", 5002, list(range(16)))
    settle(cluster)
    cluster["server"] = start_server(cluster["db"], cluster["port"], tmp / "server.log")
    s.burn(s.n1, "101", 1)  # package-0 passes max_energy_range_uj here: a wrap
    s.burn(s.n2, "202", 30)
    settle(cluster)
    s.burn(s.n1, "101", 40)
    s.burn_gpu(s.n1, 1, "101", 250_000)  # the allocated GPU: the job's
    s.burn_gpu(s.n1, 0, None, 70_000)  # a GPU nobody holds: unattributed
    settle(cluster)
    s.n1.end_job("101")  # its cgroup vanishes between two samples
    s.n2.end_job("202")
    s.n2.start_job("203", 5001, list(range(4)))
    settle(cluster)
    s.burn(s.n2, "203", 12)
    settle(cluster)
    s.n2.end_job("203")
    settle(cluster)
    s.burn(s.n1, None, 3)
    s.burn_gpu(s.n1, 1, None, 9_000)
    s.burn(s.n2, None, 4)
    settle(cluster)
    return s


def _post_events(api: str) -> None:
    for job_id, user, node in (
        ("101", "alice", "n1"),
        ("202", "bob", "n2"),
        ("203", "alice", "n2"),
    ):
        for event, t in (("start", 1_800_000_000), ("end", 1_800_000_090)):
            body = {
                "cluster": "e2e",
                "job_id": job_id,
                "event": event,
                "time": t,
                "user": user,
                "account": "ml",
                "nodes": [node],
                "tags": {"model": "resnet50"},
            }
            httpx.post(f"{api}/api/v1/jobs/events", json=body, timeout=10).raise_for_status()


def test_exact_energy_from_counters_to_senergy(cluster):
    s = _run_scenario(cluster)
    api = cluster["api"]
    _post_events(api)
    for name, proc in cluster["agents"].items():
        assert stop(proc) == 0, f"agent {name} did not exit 0 on SIGTERM"
    for name in ("n1", "n2"):
        assert list((cluster["tmp"] / "spool" / name / "batches").glob("*.json.gz")) == [], (
            f"agent {name} left undelivered batches"
        )

    for job_id, by_source in s.job_uj.items():
        job = httpx.get(f"{api}/api/v1/jobs/{job_id}", params={"cluster": "e2e"}, timeout=10).json()
        expected = {"cpu": 0, "dram": 0}
        for source, energy_uj in by_source.items():
            expected[component_of(source)] = expected.get(component_of(source), 0) + energy_uj
        assert job["by_component"] == expected, job_id
        assert job["energy_uj"] == sum(by_source.values())
        assert job["energy_kwh"] == pytest.approx(sum(by_source.values()) / UJ_PER_KWH, rel=1e-12)
    on_e2e = {"cluster": "e2e"}
    gpu_devices = httpx.get(f"{api}/api/v1/jobs/101", params=on_e2e, timeout=60).json()["devices"]
    assert [(d["source"], d["energy_uj"], d["device_name"]) for d in gpu_devices] == [
        (f"gpu/{s.n1.nvml.devices[1].uuid}", 250_000_000, "NVIDIA H100 80GB HBM3")
    ]
    assert httpx.get(f"{api}/api/v1/jobs/101", params=on_e2e, timeout=60).json()["user"] == "alice"
    assert (
        httpx.get(f"{api}/api/v1/jobs/101", params=on_e2e, timeout=60).json()["quality"]["wraps"]
        >= 1
    )

    # Conservation per node and source: jobs + unattributed == everything the node burnt.
    nodes = httpx.get(f"{api}/api/v1/nodes", params={"cluster": "e2e"}, timeout=10).json()
    for node in (s.n1, s.n2):
        rows = [r for r in nodes["nodes"] if r["node"] == node.name]
        for component in ("cpu", "dram", "gpu") if node.nvml.devices else ("cpu", "dram"):
            row = next(r for r in rows if r["component"] == component)
            measured = sum(v for k, v in node.added_uj.items() if component_of(k) == component)
            unattributed = sum(
                v for k, v in s.unattributed_uj[node.name].items() if component_of(k) == component
            )
            assert row["measured_uj"] == measured
            assert row["unattributed_uj"] == unattributed
            assert row["attributed_uj"] + row["unattributed_uj"] == row["measured_uj"]

    out = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jobenergy.cli.senergy",
                "--url",
                api,
                "-M",
                "e2e",
                "-j",
                "101,202,203",
                "-o",
                "JobID,User,EnergyUJ,TotalkWh",
                "-P",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    assert out[0] == "JobID|User|EnergyUJ|TotalkWh"
    rows = {line.split("|")[0]: line.split("|") for line in out[1:]}
    for job_id, by_source in s.job_uj.items():
        total = sum(by_source.values())
        assert rows[job_id][2] == str(total)
        assert rows[job_id][3] == f"{total / UJ_PER_KWH:.6f}"
    as_json = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobenergy.cli.senergy",
            "--url",
            api,
            "-j",
            "101",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "JOBENERGY_CLUSTER": "e2e"},  # the default for -M, as sacct's
    ).stdout
    assert json.loads(as_json)["jobs"][0]["energy_uj"] == sum(s.job_uj["101"].values())
