"""Live test against a real Slurm 22.05: users submit jobs, and their energy shows up.

Brings up the 4-node test cluster (``tests/slurm/cluster.sh up``), a PostgreSQL, the
jobenergy server, the hardware emulator (``jobenergy.sim.hwemu``: powercap trees driven by
the real job cgroups, simulated NVML driven by what fake-GPU jobs declare, and a procfs view
per node whose ``stat`` counts only that node's jobs, since the 4 nodes share one host) and
one real agent per node. alice and bob then submit CPU, GPU, srun, failing, cancelled,
array, multi-node, heterogeneous and very short jobs with the SPANK options, exactly as users
do. Checked when they have ended: ``senergy -j`` and ``sacct -o JobID,AdminComment`` show
energy (written by EpilogSlurmctld's background ``jobenergy slurm sync``), tags and Slurm
metadata are recorded, for every node Σ jobs + unattributed equals the emulated hardware's
energy, exactly (µJ), and a CPU job's package energy matches its cgroup CPU time.

Needs root and Debian (it installs and starts daemons); in CI (``CI=true``) a failure to
bring the cluster up fails the test, elsewhere it skips. Deselect with ``-m "not slurm"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.postgres]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLUSTER_SH = HERE / "cluster.sh"
CLUSTER = "testcluster"
NODES = ["n1", "n2", "n3", "n4"]
HOOK_ENV = Path("/etc/jobenergy/slurm-hooks.env")
GPU_MAP_ROOT = Path("/run/jobenergy/gpus")
INTERVAL_S = 1.0
BURN = "timeout {s} sh -c 'while :; do :; done'; true"
BIN = Path(sys.executable).parent


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(*argv: str, timeout: float = 60, check: bool = True, **kw: Any) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[None]:
    """Bring the test cluster up (idempotent); leave it running for the next session."""
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        _unavailable("the live Slurm test needs root on Debian (tests/slurm/cluster.sh)")
    proc = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        _unavailable(f"tests/slurm/cluster.sh up failed:\n{proc.stdout}\n{proc.stderr}")
    print(proc.stdout)
    yield


@pytest.fixture(scope="module")
def stack(slurm_cluster: None, pg_url: str) -> Iterator[dict[str, Any]]:
    """Start server, emulator and 4 agents; yield their handles; stop them at the end."""
    from jobenergy.sim.nvml.build import BuildError, build_libnvml
    from jobenergy.sim.processes import (
        free_port,
        start_agent,
        start_server,
        stop,
        write_agent_config,
    )

    # Outside pytest's private tmp: users' jobs and the hooks must reach it. Kept for
    # inspection with JOBENERGY_KEEP_LIVE=1.
    work = Path(tempfile.mkdtemp(prefix="jobenergy-live-"))
    work.chmod(0o755)
    print(f"live slurm work dir: {work}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(pg_url, port, work / "server.log")
    procs: list[subprocess.Popen] = []
    old_env = HOOK_ENV.read_text() if HOOK_ENV.exists() else None
    try:
        # The hooks read this at every run: point them (and the automatic sync) at our server.
        # From the node Epilog (root): this venv's Python may not be executable by SlurmUser.
        sync = (f"{sys.executable} -m jobenergy.cli.slurm sync --url {url} "
                "--jobs \"$SLURM_JOB_ID\" --wait 90 --poll 1 --settle 4 "
                f">> {work}/sync.log 2>&1")
        HOOK_ENV.write_text(
            f"JOBENERGY_URL={url}\nJOBENERGY_CLUSTER={CLUSTER}\n"
            f"JOBENERGY_GPU_MAP_DIR={GPU_MAP_ROOT}/${{SLURMD_NODENAME:-ctld}}\n"
            "JOBENERGY_OUTBOX=/var/spool/jobenergy/outbox\n"
            f"JOBENERGY_SYNC_CMD='{sync}'\nJOBENERGY_SYNC_FROM=epilog\n")
        emu_root = work / "hw"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jobenergy.sim.hwemu", "--root", str(emu_root), "--nodes",
             ",".join(NODES), "--hold"],
            stdout=open(work / "hwemu.log", "ab"), stderr=subprocess.STDOUT))  # noqa: SIM115
        for _ in range(100):
            if (emu_root / "ready").exists():
                break
            time.sleep(0.1)
        try:
            libdir = build_libnvml(work / "nvml").parent
            nvml = "auto"
        except BuildError:
            libdir, nvml = None, "off"
        for node in NODES:
            cfg = write_agent_config(
                work / f"agent-{node}.toml", collector_url=url, cluster=CLUSTER, node=node,
                interval_s=INTERVAL_S, push_interval_s=1.0, spool_dir=str(work / "spool" / node),
                sysfs_root=str(emu_root / node / "sys"),
                procfs_root=str(emu_root / node / "proc"),  # this node's jobs only, not the host's
                cgroup_root="/sys/fs/cgroup", nvml=nvml,
                gpu_map_dir=str(GPU_MAP_ROOT / node))
            env = {"JOBENERGY_NVML_SIM_STATE": str(emu_root / node / "nvml.state")}
            if libdir is not None:
                env["LD_LIBRARY_PATH"] = str(libdir)
            procs.append(start_agent(cfg, work / f"agent-{node}.log", env))
        time.sleep(2.5 * INTERVAL_S)  # every agent has its baseline sample of held counters
        (emu_root / "hold").unlink()
        yield {"url": url, "work": work, "emu": emu_root, "agents": procs[1:], "emu_proc": procs[0],
               "nvml": nvml, "stop": stop}
    finally:
        for proc in reversed(procs):
            stop(proc)
        stop(server)
        if old_env is not None:
            HOOK_ENV.write_text(old_env)
        if os.environ.get("JOBENERGY_KEEP_LIVE") != "1":
            shutil.rmtree(work, ignore_errors=True)


def _submit(user: str, *args: str, cwd: Path) -> str:
    out = _run("runuser", "-u", user, "--", "sbatch", "--parsable", *args, cwd=cwd)
    return out.strip().split(";")[0]


def _sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    out = _run("sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o",
               "JobIDRaw,JobID,State,ExitCode,NodeList,AdminComment")
    rows = {}
    for line in out.splitlines():
        raw, jid, state, code, nodes, admin = line.split("|", 5)
        rows[raw] = {"id": jid, "state": state, "exit": code, "nodes": nodes, "admin": admin}
    return rows


def _wait_ended(job_ids: list[str], timeout_s: float) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
    while True:
        rows = _sacct(job_ids)
        if all(r["state"].startswith(done) for r in rows.values()) and len(rows) >= len(job_ids):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs did not end in {timeout_s}s: {rows}")
        time.sleep(1)


def test_jobs_accounted_like_users_see_them(stack: dict[str, Any],
                                            capsys: pytest.CaptureFixture) -> None:
    url = stack["url"]
    jobdir = stack["work"] / "jobs"
    jobdir.mkdir()
    jobdir.chmod(0o1777)
    out = ["-o", str(jobdir / "%x-%j.out")]
    gpu_env = "--export=ALL,JOBENERGY_FAKE_GPU_UTIL=90"
    t_submit = time.time()
    jobs: dict[str, str] = {}
    jobs["cpu"] = _submit("alice", "-J", "cpu-train", "-A", "proj2", "-w", "n1",
                          "--energy-model=llama-7b", "--energy-phase=training",
                          "--energy-tag=team=nlp", "--energy-tag=dataset=c4", *out,
                          "--wrap", BURN.format(s=3), cwd=jobdir)
    jobs["gpu"] = _submit("bob", "-J", "gpu-infer", "-w", "n2", "--gpus=1", gpu_env,
                          "--energy-phase=inference", *out, "--wrap",
                          "srun " + BURN.format(s=3), cwd=jobdir)
    jobs["fail"] = _submit("bob", "-J", "fails", "-w", "n3", *out, "--wrap",
                           BURN.format(s=1) + "; exit 3", cwd=jobdir)
    jobs["array"] = _submit("alice", "-J", "arr", "-a", "0-2", "-w", "n4", *out, "--wrap",
                            BURN.format(s=1), cwd=jobdir)
    jobs["multi"] = _submit("alice", "-J", "two-node", "-N2", "-w", "n[1-2]",
                            "--gpus-per-node=1", gpu_env, *out, "--wrap",
                            "srun " + BURN.format(s=2), cwd=jobdir)
    jobs["cancel"] = _submit("bob", "-J", "cancelme", "-w", "n3", *out, "--wrap", "sleep 60",
                             cwd=jobdir)
    het = jobdir / "het.sh"
    het.write_text("#!/bin/bash\n#SBATCH -N1 -w n3\n#SBATCH hetjob\n#SBATCH -N1 -w n4\n"
                   "srun --het-group=0,1 " + BURN.format(s=1) + "\n")
    het.chmod(0o644)
    jobs["het"] = _submit("alice", "-J", "het", *out, str(het), cwd=jobdir)
    # Shorter than one sample interval.
    jobs["short"] = _submit("bob", "-J", "short", "-w", "n4", *out, "--wrap",
                            BURN.format(s=0.3), cwd=jobdir)
    srun = subprocess.Popen(
        ["runuser", "-u", "alice", "--", "srun", "-J", "srun-job", "-w", "n3",
         "--energy-tag=via=srun", "--energy-model=bert", "sh", "-c",
         "echo $SLURM_JOB_ID; " + BURN.format(s=2)],
        cwd=jobdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bad = subprocess.run(["runuser", "-u", "alice", "--", "sbatch", "--energy-phase=lunch",
                          "--wrap", "true"], capture_output=True, text=True, cwd=jobdir)
    assert bad.returncode != 0 and "--energy-phase" in bad.stderr, bad.stderr
    time.sleep(4)
    _run("scancel", jobs["cancel"])
    srun_out, srun_err = srun.communicate(timeout=60)
    assert srun.returncode == 0, srun_err
    jobs["srun"] = srun_out.split()[0]

    # Every job id, array tasks and het components included (each is a job of its own).
    all_ids = list(jobs.values())
    rows = _wait_ended(all_ids, 120)
    raw_ids = sorted(rows, key=int)
    by_name = {r["id"]: raw for raw, r in rows.items()}
    array_ids = [by_name[f"{jobs['array']}_{i}"] for i in range(3)]
    het_ids = [by_name[f"{jobs['het']}+{i}"] for i in range(2)]
    t_end = time.time()

    # AdminComment is written by EpilogSlurmctld's background sync once energy is final.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = _sacct(raw_ids)
        if all("energy_kwh=" in r["admin"] for r in rows.values()):
            break
        time.sleep(2)
    missing = {raw: r for raw, r in rows.items() if "energy_kwh=" not in r["admin"]}
    assert not missing, f"no AdminComment energy for {missing}"
    sacct_out = _run("sacct", "-X", "-j", ",".join(raw_ids), "-o", "JobID,State,AdminComment%80")
    print(sacct_out)

    # Freeze the hardware, let every agent sample the frozen counters, stop the agents.
    (stack["emu"] / "hold").touch()
    time.sleep(3 * INTERVAL_S)
    for agent in stack["agents"]:
        assert stack["stop"](agent) == 0
    stack["stop"](stack["emu_proc"])
    ledger = json.loads((stack["emu"] / "ledger.json").read_text())

    with httpx.Client(base_url=url, timeout=10) as api:
        got = {raw: api.get(f"/api/v1/jobs/{raw}", params={"cluster": CLUSTER}).json()
               for raw in raw_ids}
        node_rows = api.get("/api/v1/nodes", params={"cluster": CLUSTER}).json()["nodes"]

    # senergy, as users run it.
    env = {**os.environ, "JOBENERGY_URL": url}
    senergy = _run(str(BIN / "senergy"), "-j", ",".join(raw_ids), "-o",
                   "JobID,User,JobName,State,EnergyUJ,TotalkWh,GPUkWh,Model,Phase", "-P", env=env)
    print(senergy)
    lines = {line.split("|")[0]: line.split("|") for line in senergy.splitlines()[1:]}
    for raw in raw_ids:
        if raw == jobs["cancel"]:
            continue
        assert raw in lines and int(lines[raw][4]) > 0, (raw, senergy)  # kWh may round to 0

    # Metadata from the hooks and from sacct.
    cpu = got[jobs["cpu"]]
    assert cpu["user"] == "alice" and cpu["account"] == "proj2" and cpu["name"] == "cpu-train"
    assert cpu["tags"] == {"model": "llama-7b", "phase": "training", "team": "nlp",
                           "dataset": "c4"}
    assert cpu["state"] == "COMPLETED" and cpu["energy_uj"] > 0
    assert got[jobs["gpu"]]["user"] == "bob" and got[jobs["gpu"]]["tags"]["phase"] == "inference"
    assert got[jobs["fail"]]["state"] == "FAILED" and got[jobs["fail"]]["exit_code"] == "3:0"
    assert got[jobs["cancel"]]["state"] == "CANCELLED"
    assert got[jobs["srun"]]["tags"]["via"] == "srun"
    assert got[jobs["srun"]]["tags"]["model"] == "bert"
    for i, raw in enumerate(array_ids):
        assert got[raw]["tags"]["array_job_id"] == jobs["array"]
        assert got[raw]["tags"]["array_task_id"] == str(i)
    for i, raw in enumerate(het_ids):
        assert got[raw]["tags"]["het_job_id"] == jobs["het"]
        assert got[raw]["tags"]["het_job_offset"] == str(i)
    # Het components are separate jobs on their own nodes: no energy on the other's node.
    assert set(got[het_ids[0]]["by_node"]) == {"n3"}
    assert set(got[het_ids[1]]["by_node"]) == {"n4"}
    multi = got[jobs["multi"]]
    assert set(multi["nodes"]) == {"n1", "n2"} and set(multi["by_node"]) == {"n1", "n2"}
    assert multi["energy_uj"] == sum(sum(c.values()) for c in multi["by_node"].values())
    if stack["nvml"] == "auto":
        assert got[jobs["gpu"]]["by_component"].get("gpu", 0) > 0
        assert all(multi["by_node"][n].get("gpu", 0) > 0 for n in ("n1", "n2"))
        assert got[jobs["cpu"]]["by_component"].get("gpu", 0) == 0

    # Conservation per node against the emulated hardware, exactly in µJ.
    measured = {n: 0 for n in NODES}
    unattributed = {n: 0 for n in NODES}
    for row in node_rows:
        if row["component"] == "psys":
            continue
        measured[row["node"]] += row["measured_uj"]
        unattributed[row["node"]] += row["unattributed_uj"]
    listed = api_jobs = httpx.get(f"{url}/api/v1/jobs", params={"cluster": CLUSTER,
                                                               "limit": 1000}).json()["jobs"]
    attributed = {n: 0 for n in NODES}
    for job in listed:
        for node, comps in job["by_node"].items():
            attributed[node] += sum(v for k, v in comps.items() if k != "psys")
    for node in NODES:
        hw = sum(v for k, v in ledger["nodes"][node].items()
                 if stack["nvml"] == "auto" or not k.startswith("gpu/"))
        assert measured[node] == hw, (node, measured[node], hw)
        assert attributed[node] + unattributed[node] == hw, (node, attributed, unattributed)

    # CPU shares follow the node's own CPU time. Under the emulator's model (the ledger's)
    # a node draws cpu_idle_w + cpu_per_cpu_w × its busy CPUs, and the agent splits a
    # package's energy by CPU time (dynamic part) and allocation (static part): a job with T s
    # of cgroup CPU time on a node of N CPUs gets at least (cpu_idle_w / N + cpu_per_cpu_w) × T,
    # whatever the static floor, as long as the node's busy time is its jobs' (the node's
    # own /proc/stat from the emulator). With the host's /proc/stat the other nodes' jobs
    # count as busy time of no job on every node and shrink the share far below that.
    model = ledger["model"]
    stat = (stack["emu"] / "n1" / "proc" / "stat").read_text().splitlines()
    ncpus = sum(1 for line in stat if line.split()[0][3:].isdigit())
    floor_w_per_cpu_s = model["cpu_idle_w"] / ncpus + model["cpu_per_cpu_w"]
    ratios = {}
    for name, raw in jobs.items():
        for node, cpu_ns in ((n, c[raw]) for n, c in ledger["job_cpu_ns"].items() if raw in c):
            if cpu_ns >= 200_000_000:  # at least 0.2 CPU-s: well above tick granularity
                pkg_uj = got[raw]["by_node"].get(node, {}).get("cpu", 0)
                ratios[f"{name}@{node}"] = (pkg_uj / cpu_ns * 1e3, cpu_ns / 1e9, pkg_uj / 1e6)
    with capsys.disabled():
        print("\nW per job CPU-s (package J / cgroup CPU-s; bound "
              f"{floor_w_per_cpu_s:.1f}): " + ", ".join(
                  f"{k}={r:.1f} ({t:.2f} CPU-s, {e:.1f} J)" for k, (r, t, e) in ratios.items()))
    cpu_ns = ledger["job_cpu_ns"]["n1"][jobs["cpu"]]
    assert cpu_ns >= 500_000_000, ledger["job_cpu_ns"]  # the 3 s burner ran
    cpu_pkg_uj = got[jobs["cpu"]]["by_node"]["n1"]["cpu"]
    low = 0.9 * floor_w_per_cpu_s * cpu_ns / 1e3  # µJ; 10 %: sampling skew, tick rounding
    high = ((model["cpu_idle_w"] + model["cpu_per_cpu_w"] * ncpus)
            * (got[jobs["cpu"]]["elapsed_s"] + 2 * INTERVAL_S) * 1e6)
    assert low <= cpu_pkg_uj <= high, (cpu_pkg_uj, low, high, ratios)

    # Jobs shorter than one sample interval: energy kept, not lost to unattributed.
    short = got[jobs["short"]]
    assert short["energy_uj"] > 0
    with capsys.disabled():
        print(f"\nlive slurm: {len(raw_ids)} jobs in {t_end - t_submit:.1f}s; "
              f"short job ({short['elapsed_s']}s) energy_uj={short['energy_uj']} "
              f"cpu={short['by_component']}; unattributed per node (µJ)={unattributed}; "
              f"jobs listed={len(api_jobs)}")
