"""Validate GPU job energy on a real NVIDIA GPU (never run by the tests).

Runs a fixed matrix-multiply load (torch if installed, else cupy) for ``--seconds`` in a
subprocess that looks like a Slurm job (SLURM_JOB_ID / SLURM_JOB_GPUS in its environment, a
prolog map file, and a ``/proc/<pid>/cgroup`` under a private procfs root naming ``job_<id>``),
samples :class:`GpuAccounting` every ``--interval-s`` and compares three figures over the
same window:

1. the job's attributed GPU energy (sum of its ``jobs_uj`` over the intervals);
2. the NVML total energy counter delta, read directly with pynvml at the first and last sample;
3. ``nvidia-smi --query-gpu=power.draw`` polled every 100 ms, integrated (trapezoid).

Usage: python bench/gpu_validate.py [--gpu 0] [--seconds 60] [--interval-s 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

JOB_ID = "990001"
LOAD = r"""
import sys, time
seconds = float(sys.argv[1])
try:
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    sync, mm = torch.cuda.synchronize, lambda: a @ a
except ImportError:
    import cupy
    a = cupy.random.random((8192, 8192), dtype=cupy.float32).astype(cupy.float16)
    sync, mm = cupy.cuda.Device().synchronize, lambda: a @ a
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(20):
        mm()
    sync()
"""


def _have_load_library() -> bool:
    code = (
        "import importlib.util as u, sys\n"
        "sys.exit(not (u.find_spec('torch') or u.find_spec('cupy')))"
    )
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class SmiPower:
    """Poll ``nvidia-smi power.draw`` in a thread and integrate it over a window."""

    def __init__(self, gpu: int) -> None:
        self.points: list[tuple[float, float]] = []  # (monotonic s, W)
        self._proc = subprocess.Popen(
            [
                "nvidia-smi",
                "-i",
                str(gpu),
                "--query-gpu=power.draw",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.points.append((time.monotonic(), float(line.strip())))
            except ValueError:
                continue

    def stop(self) -> None:
        """Stop polling."""
        self._proc.terminate()
        self._proc.wait()

    def energy_uj(self, start_s: float, end_s: float) -> int:
        """Return the trapezoid integral of power over [start_s, end_s], µJ."""
        pts = [p for p in self.points if start_s <= p[0] <= end_s]
        joules = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in pairwise(pts))
        return round(joules * 1_000_000)


def _fake_job_proc(procfs: Path, pid: int, gpu_minor: int) -> None:
    d = procfs / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    rel = f"system.slice/slurmstepd.scope/job_{JOB_ID}/step_0/user/task_0"
    (d / "cgroup").write_text(f"0::/{rel}\n")
    (d / "environ").write_bytes(f"SLURM_JOB_ID={JOB_ID}\0SLURM_JOB_GPUS={gpu_minor}\0".encode())


def _rel(a: int, b: int) -> str:
    return f"{(a - b) / b * 100:+.2f} %" if b else "n/a"


def main() -> int:
    """Run the validation; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to load")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=1.0)
    args = parser.parse_args()
    if not _have_load_library():
        print("error: neither torch nor cupy is installed: no CUDA load to run", file=sys.stderr)
        return 2
    if shutil.which("nvidia-smi") is None:
        print("error: nvidia-smi not found: is this a machine with an NVIDIA GPU?", file=sys.stderr)
        return 2

    import pynvml

    from jobenergy.agent.gpu import GpuAccounting

    try:
        pynvml.nvmlInit()  # held for the direct counter reads below
    except pynvml.NVMLError as err:
        print(f"error: NVML unavailable: {err}", file=sys.stderr)
        return 2
    handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    minor = pynvml.nvmlDeviceGetMinorNumber(handle)
    name = pynvml.nvmlDeviceGetName(handle)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        procfs, cgroup, gpu_map = tmp / "proc", tmp / "cgroup", tmp / "map"
        for d in (procfs, cgroup, gpu_map):
            d.mkdir()
        (gpu_map / JOB_ID).write_text(f"{minor}\n")
        acc = GpuAccounting("auto", procfs, cgroup, gpu_map)
        smi = SmiPower(args.gpu)
        env = {"SLURM_JOB_ID": JOB_ID, "SLURM_JOB_GPUS": str(minor), "CUDA_VISIBLE_DEVICES": uuid}
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(args.seconds)], env={**os.environ, **env}
        )
        _fake_job_proc(procfs, load.pid, minor)
        time.sleep(1.0)  # let the load reach the GPU; the window starts at the first sample
        for info in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            _fake_job_proc(procfs, info.pid, minor)  # NVML may report host pids (containers)
        job_uj = 0
        counter0_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        prev = acc.sample([JOB_ID])
        t_start = time.monotonic()
        while load.poll() is None:
            time.sleep(args.interval_s)
            cur = acc.sample([JOB_ID])
            for src in acc.attribute(prev, cur):
                if src.source == f"gpu/{uuid}":
                    job_uj += src.jobs_uj.get(JOB_ID, 0)
            prev = cur
        counter1_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        t_end = time.monotonic()
        time.sleep(0.3)
        smi.stop()
        acc.close()
        if load.returncode != 0:
            print(f"error: the load exited with {load.returncode}", file=sys.stderr)
            return 1
    counter_uj = (counter1_mj - counter0_mj) * 1000
    smi_uj = smi.energy_uj(t_start, t_end)
    window_s = t_end - t_start
    print(f"GPU {args.gpu} {name} {uuid}, load {args.seconds:.0f} s, window {window_s:.1f} s")
    print(
        f"  job attributed energy  : {job_uj / 1e6:12.1f} J ({job_uj / 1e6 / window_s:.1f} W avg)"
    )
    print(
        f"  NVML counter delta     : {counter_uj / 1e6:12.1f} J  "
        f"job vs counter {_rel(job_uj, counter_uj)}"
    )
    print(
        f"  nvidia-smi power.draw∫ : {smi_uj / 1e6:12.1f} J  "
        f"counter vs smi {_rel(counter_uj, smi_uj)}; job vs smi {_rel(job_uj, smi_uj)}"
    )
    print(f"  GPU errors: {acc.errors_total or 'none'}")
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
