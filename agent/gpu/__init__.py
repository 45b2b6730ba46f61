"""GPU energy per job from the GPU's own energy counter (NVML).

Layers, each in its own module:

- :mod:`.nvml` — :class:`NvmlSensor` reads every GPU's cumulative energy counter (or integrates
  power where the counter is not supported) and its compute processes, translating pynvml
  errors at the boundary.
- :mod:`.allocation` — :class:`GpuAllocation` tells which Slurm job holds which GPU (by minor
  number) and which job a GPU process belongs to.
- :mod:`.attribution` — :func:`attribute_device` (pure, conserving) and :class:`GpuAccounting`,
  which ties the three together for the agent loop.
"""

from jobenergy.agent.gpu.allocation import GpuAllocation
from jobenergy.agent.gpu.attribution import (
    DeviceState,
    GpuAccounting,
    GpuSnapshot,
    ProcessState,
    attribute_device,
)
from jobenergy.agent.gpu.nvml import NvmlSensor
from jobenergy.agent.gpu.samples import GpuDeviceSample, GpuProcess

__all__ = [
    "DeviceState",
    "GpuAccounting",
    "GpuAllocation",
    "GpuDeviceSample",
    "GpuProcess",
    "GpuSnapshot",
    "NvmlSensor",
    "ProcessState",
    "attribute_device",
]
