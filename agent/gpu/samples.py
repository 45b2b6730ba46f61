"""Plain data read from NVML at one sample (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)  # not frozen: built per GPU per sample (agent/readings.py)
class GpuProcess:
    """A compute process NVML lists on a GPU.

    Attributes:
        pid: Host process id.
        sm_util: Mean SM utilisation since the previous sample, percent; None when NVML has no
            sample for it (idle, or the driver lacks per-process utilisation).
        gpu_instance: MIG GPU instance id, or None outside MIG.
    """

    pid: int
    sm_util: int | None = None
    gpu_instance: int | None = None


@dataclass(slots=True)  # not frozen: built per GPU per sample (agent/readings.py)
class GpuDeviceSample:
    """One GPU at one sample.

    Attributes:
        index: NVML index.
        uuid: ``GPU-...`` (stable across reboots; names the source ``gpu/<uuid>``).
        minor: ``/dev/nvidia<minor>``: what Slurm's gres/gpu and the device cgroup name.
        name: Product name, e.g. "NVIDIA H100 80GB HBM3".
        energy_uj: Cumulative energy, µJ: NVML's total energy counter (mJ × 1000), or the
            sensor's power-integrated counter when ``estimated``; None when the read failed.
        estimated: The energy is integrated from power samples, not the hardware counter.
        lost: The GPU fell off the bus (NVML GPU_IS_LOST); nothing else is valid.
        processes: Compute processes on the GPU.
        mig_slices: MIG GPU instance id → its number of slices; empty outside MIG mode.
    """

    index: int
    uuid: str
    minor: int
    name: str
    energy_uj: int | None
    estimated: bool = False
    lost: bool = False
    processes: tuple[GpuProcess, ...] = ()
    mig_slices: dict[int, int] = field(default_factory=dict)
