"""``jobenergy demo``: simulated nodes, real agents, a real server, a sacct-style report."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from jobenergy.cli.report import DEFAULT_FIELDS, parse_fields, render
from jobenergy.sim.node import SimNode
from jobenergy.sim.nvml.build import BuildError, build_libnvml
from jobenergy.sim.nvml.state import STATE_ENV
from jobenergy.sim.processes import free_port, start_agent, start_server, stop, write_agent_config
from jobenergy.sim.workload import DEMO_JOBS, JobSpec, PowerModel, step_node

CLUSTER = "demo"
STEP_S = 0.25
INTERVAL_S = 1.0


def _event(api: str, spec: JobSpec, kind: str, **extra: object) -> None:
    body = {
        "cluster": CLUSTER,
        "job_id": spec.job_id,
        "event": kind,
        "time": datetime.now(UTC).isoformat(),
        "user": spec.user,
        "uid": spec.uid,
        "account": spec.account,
        "partition": spec.partition,
        "name": spec.name,
        "nodes": [spec.node],
        "tags": spec.tags,
        **extra,
    }
    httpx.post(f"{api}/api/v1/jobs/events", json=body, timeout=10).raise_for_status()


def run_demo(port: int = 0, keep_running: bool = False, workdir: Path | None = None) -> None:
    """Run the demo workload end to end and print the report.

    However it ends (done, an error, Ctrl-C, or SIGTERM turned into ``SystemExit`` by the
    CLI), the agents and the server are stopped and a temporary folder is removed; a
    ``workdir`` given is kept.
    """
    temporary = workdir is None
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="jobenergy-demo-"))
    children: list[subprocess.Popen] = []  # the server first, then the agents
    try:
        work.mkdir(parents=True, exist_ok=True)
        _run(work, port or free_port(), keep_running, children)
    finally:
        for proc in reversed(children):  # agents first: their last batches reach the server
            stop(proc)
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, port: int, keep_running: bool, children: list[subprocess.Popen]) -> None:
    api = f"http://127.0.0.1:{port}"
    print(f"jobenergy demo: working in {work}", flush=True)
    children.append(start_server(
        f"sqlite:///{work / 'jobenergy.db'}",
        port,
        work / "server.log",
        "--pue",
        "1.3",
        "--carbon-intensity",
        "55",
    ))
    jobs = {spec.job_id: spec for spec in DEMO_JOBS}
    nodes: dict[str, SimNode] = {}
    agents = []
    libnvml_dir = _build_nvml(work)
    for name in sorted({spec.node for spec in DEMO_JOBS}):
        gpus = 4 if name.startswith("gpu") and libnvml_dir else 0
        node = SimNode(work / "nodes" / name, name, ncpus=32, packages=2, gpus=gpus)
        nodes[name] = node
        env = {}
        if libnvml_dir:
            env = {"LD_LIBRARY_PATH": str(libnvml_dir), STATE_ENV: str(node.nvml_state_path)}
        config = write_agent_config(
            work / f"agent-{name}.toml",
            collector_url=api,
            auth="none",  # the demo server runs --auth none on loopback
            cluster=CLUSTER,
            node=name,
            interval_s=INTERVAL_S,
            push_interval_s=2.0,
            spool_dir=str(work / "spool" / name),
            sysfs_root=str(node.sysfs_root),
            procfs_root=str(node.procfs_root),
            cgroup_root=str(node.cgroup_root),
            nvml="auto" if gpus else "off",
            gpu_map_dir=str(work / "gpumap" / name),
            annotation_socket=str(work / "sock" / f"{name}.sock"),
        )
        agent = start_agent(config, work / f"agent-{name}.log", env)
        children.append(agent)
        agents.append(agent)
    print(f"started {len(agents)} agents and the API at {api}; running the workload...",
          flush=True)
    _drive(api, nodes, jobs, PowerModel())
    for proc in agents:
        stop(proc)
    resp = httpx.get(
        f"{api}/api/v1/jobs", params={"cluster": CLUSTER, "limit": 1000}, timeout=10
    )
    resp.raise_for_status()
    found = sorted(resp.json()["jobs"], key=lambda j: j["job_id"])
    print()
    print(render(found, parse_fields(DEFAULT_FIELDS + ",Model,Phase")))
    print()
    print(f"Web pages: {api}/  (job 1001: {api}/job?id=1001&cluster={CLUSTER})")
    print(f"API: {api}  (e.g. {api}/api/v1/jobs/1001?cluster={CLUSTER}, {api}/docs)")
    print()
    print("Energy per model and phase (senergy leaderboard):", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jobenergy.cli.senergy",
            "leaderboard",
            "--url",
            api,
            "-M",
            CLUSTER,
        ],
        check=False,
    )
    print()
    if not keep_running:
        print("done: the server stops now (--keep-running leaves it up to explore)")
        return
    print(f"try: senergy --url {api} -j 1001,1003 -o JobID,User,GPUkWh,TotalkWh,CO2eKg")
    print(f"Open {api}/job?id=1001&cluster={CLUSTER} for job 1001's power curve, "
          f"{api}/leaderboards for the charts.")
    print("The server stays up; Ctrl-C stops it.", flush=True)
    try:
        children[0].wait()
    except KeyboardInterrupt:
        pass


def _build_nvml(work: Path) -> Path | None:
    """Build the simulated NVML for the GPU nodes; None (CPU-only demo) without a compiler."""
    try:
        return build_libnvml(work / "nvml").parent
    except BuildError as err:
        print(f"no simulated GPUs: {err}")
        return None


def _drive(
    api: str, nodes: dict[str, SimNode], jobs: dict[str, JobSpec], power: PowerModel
) -> None:
    started: set[str] = set()
    ended: set[str] = set()
    end_s = max(spec.start_s + spec.duration_s for spec in jobs.values()) + 2 * INTERVAL_S
    t0 = time.monotonic()
    last = t0
    while True:
        now = time.monotonic()
        elapsed = now - t0
        if elapsed > end_s:
            break
        for spec in jobs.values():
            node = nodes[spec.node]
            if spec.job_id not in started and elapsed >= spec.start_s:
                started.add(spec.job_id)
                busy_cpus = {c for j in node.jobs.values() for c in j.cpus}
                busy_gpus = {g for j in node.jobs.values() for g in j.gpus}
                free_cpus = sorted(set(range(node.ncpus)) - busy_cpus)
                free_gpus = sorted({d.minor for d in node.nvml.devices} - busy_gpus)
                gpus = free_gpus[: spec.gpus]
                node.start_job(spec.job_id, spec.uid, free_cpus[: spec.cpus], gpus)
                node.gpu_util[spec.job_id] = spec.gpu_util
                _event(api, spec, "start", gpus=[str(g) for g in gpus])
            elif (
                spec.job_id in started
                and spec.job_id not in ended
                and elapsed >= spec.start_s + spec.duration_s
            ):
                ended.add(spec.job_id)
                node.end_job(spec.job_id)
                _event(api, spec, "end", state="COMPLETED", exit_code="0:0")
        for node in nodes.values():
            step_node(node, jobs, power, now - last)
        last = now
        time.sleep(STEP_S)
