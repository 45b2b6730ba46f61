"""CPU time per sample of GpuAccounting.sample + attribute: 8 simulated GPUs, 8 jobs.

Builds the simulated libnvidia-ml.so.1, preloads it (pynvml then resolves its soname to it),
builds a node tree with 8 cgroup v2 jobs (one GPU each, from the prolog map) and one busy
process per GPU, and times the agent's GPU work with ``time.process_time`` (the agent's own
CPU cost, not wall time). Target: <= 2 ms per sample.

Usage: .venv/bin/python bench/agent_gpu_bench.py [--samples N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from jobenergy.sim.nvml.build import build_libnvml, preload
from jobenergy.sim.nvml.state import STATE_ENV, SimDevice, SimProcess, SimState, write_state

GPUS = 8


def main() -> None:
    """Run the benchmark and print the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        preload(build_libnvml(tmp / "lib"))
        state_path = tmp / "state.txt"
        os.environ[STATE_ENV] = str(state_path)
        state = SimState(
            devices=[
                SimDevice(
                    index=i,
                    uuid=f"GPU-{i:08d}-0000-0000-0000-{i:012d}",
                    minor=i,
                    energy_mj=1_000_000,
                    power_mw=650_000,
                    processes=[SimProcess(pid=10_000 + i, sm_util=90)],
                )
                for i in range(GPUS)
            ]
        )
        write_state(state_path, state)
        procfs, cgroup, gpu_map = tmp / "proc", tmp / "cgroup", tmp / "map"
        gpu_map.mkdir()
        jobs = [str(1000 + i) for i in range(GPUS)]
        for i, job in enumerate(jobs):
            rel = f"system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0"
            (cgroup / rel).mkdir(parents=True)
            (cgroup / rel / "cgroup.procs").write_text(f"{10_000 + i}\n")
            (procfs / str(10_000 + i)).mkdir(parents=True)
            (procfs / str(10_000 + i) / "cgroup").write_text(f"0::/{rel}\n")
            (gpu_map / job).write_text(f"{i}\n")

        from jobenergy.agent.gpu import GpuAccounting

        acc = GpuAccounting("auto", procfs, cgroup, gpu_map)
        assert acc.available, acc.unavailable_reason
        prev = acc.sample(jobs)
        attributed = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(args.samples):
            cur = acc.sample(jobs)
            attributed += sum(sum(s.jobs_uj.values()) for s in acc.attribute(prev, cur))
            prev = cur
        cpu_ms = (time.process_time() - cpu0) * 1000 / args.samples
        wall_ms = (time.perf_counter() - wall0) * 1000 / args.samples
        acc.close()
    print(
        f"GpuAccounting.sample+attribute, {GPUS} GPUs / {len(jobs)} jobs, "
        f"{args.samples} samples: {cpu_ms:.3f} ms CPU per sample ({wall_ms:.3f} ms wall); "
        f"target <= 2 ms"
    )


if __name__ == "__main__":
    main()
