"""A small DL-like workload driving simulated nodes with a simple power model.

Power model per node (watts), applied every step of ``dt`` seconds:

* each RAPL package: ``idle_w + per_cpu_w × busy CPUs on that socket`` (CPUs split evenly
  over sockets);
* each DRAM zone: ``dram_idle_w + dram_per_cpu_w × busy CPUs on that socket``;
* each GPU: ``gpu_idle_w + util × (gpu_max_w - gpu_idle_w)`` (written to the simulated NVML
  state when the node has GPUs).

Busy CPUs are the jobs' allocated CPUs × their utilisation, plus a little OS noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobenergy.sim.node import SimNode


@dataclass(frozen=True)
class JobSpec:
    """A job of the demo workload."""

    job_id: str
    node: str
    user: str
    uid: int
    account: str
    partition: str
    name: str
    start_s: float
    duration_s: float
    cpus: int
    cpu_util: float
    gpus: int = 0
    gpu_util: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PowerModel:
    """Watts of the simulated hardware."""

    idle_w: float = 40.0
    per_cpu_w: float = 6.0
    dram_idle_w: float = 6.0
    dram_per_cpu_w: float = 0.7
    os_busy_cpus: float = 0.05
    gpu_idle_w: float = 70.0
    gpu_max_w: float = 700.0


DEMO_JOBS: tuple[JobSpec, ...] = (
    JobSpec(
        "1001",
        "gpu-a01",
        "alice",
        2001,
        "vision",
        "gpu",
        "resnet50-train",
        0.5,
        14,
        8,
        0.9,
        gpus=2,
        gpu_util=0.95,
        tags={"model": "resnet50", "phase": "training"},
    ),
    JobSpec(
        "1002",
        "gpu-a01",
        "bob",
        2002,
        "nlp",
        "gpu",
        "bert-serve",
        3.0,
        9,
        4,
        0.4,
        gpus=1,
        gpu_util=0.35,
        tags={"model": "bert-base", "phase": "inference"},
    ),
    JobSpec(
        "1003",
        "gpu-a02",
        "bob",
        2002,
        "nlp",
        "gpu",
        "llama7b-serve",
        1.0,
        15,
        8,
        0.5,
        gpus=4,
        gpu_util=0.6,
        tags={"model": "llama-2-7b", "phase": "inference"},
    ),
    JobSpec(
        "1004",
        "cpu-c01",
        "carol",
        2003,
        "data",
        "cpu",
        "tokenize",
        1.0,
        8,
        16,
        1.0,
        tags={"phase": "other"},
    ),
    JobSpec(
        "1005",
        "cpu-c01",
        "alice",
        2001,
        "vision",
        "cpu",
        "augment",
        10.0,
        6,
        8,
        0.8,
        tags={"model": "resnet50", "phase": "other"},
    ),
)


def busy_cpus(node: SimNode, jobs: dict[str, JobSpec], power: PowerModel) -> dict[str, float]:
    """Return busy CPUs per running job on ``node``."""
    return {j: jobs[j].cpus * jobs[j].cpu_util for j in node.jobs}


def step_node(node: SimNode, jobs: dict[str, JobSpec], power: PowerModel, dt_s: float) -> None:
    """Advance one node by ``dt_s``: CPU time of jobs, RAPL counters."""
    wall_ns = int(dt_s * 1e9)
    per_job = busy_cpus(node, jobs, power)
    for job_id, busy in per_job.items():
        node.add_cpu_time(job_id, int(busy * wall_ns), 0)
    node.add_cpu_time(None, int(power.os_busy_cpus * wall_ns), wall_ns)
    busy_total = sum(per_job.values()) + power.os_busy_cpus
    per_socket = busy_total / node.packages
    for pkg in range(node.packages):
        node.add_energy(
            f"package-{pkg}", int((power.idle_w + power.per_cpu_w * per_socket) * dt_s * 1e6)
        )
        node.add_energy(
            f"package-{pkg}/dram",
            int((power.dram_idle_w + power.dram_per_cpu_w * per_socket) * dt_s * 1e6),
        )
    for dev in node.nvml.devices:
        holders = [j for j, job in node.jobs.items() if dev.minor in job.gpus]
        util = max((jobs[j].gpu_util for j in holders), default=0.0)
        power_w = power.gpu_idle_w + util * (power.gpu_max_w - power.gpu_idle_w)
        node.add_gpu_energy(dev.index, int(power_w * dt_s * 1000), int(power_w * 1000))
