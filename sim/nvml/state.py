"""Write the simulated NVML's state file (the format is documented in ``nvml_sim.c``).

Tests and simulators describe GPUs with these dataclasses and call :func:`write_state`, which
replaces the file atomically (temp file + rename): the C library notices the new inode on its
next call and re-reads it, so the process under test sees a consistent state.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable the C library reads the state file's path from.
STATE_ENV = "JOBENERGY_NVML_SIM_STATE"


@dataclass(slots=True)
class SimProcess:
    """A compute process on a simulated GPU.

    Attributes:
        pid: Process id (as in the node's procfs tree).
        sm_util: SM utilisation, percent; None means no utilisation sample for it.
        mem_util: Memory utilisation, percent.
        used_mem: GPU memory used, bytes.
        gpu_instance: MIG GPU instance id, or None outside MIG.
    """

    pid: int
    sm_util: int | None = None
    mem_util: int = 0
    used_mem: int = 1 << 30
    gpu_instance: int | None = None


@dataclass(slots=True)
class SimDevice:
    """One simulated GPU.

    Attributes:
        index: NVML index.
        uuid: ``GPU-xxxxxxxx-...`` as NVML prints it.
        minor: ``/dev/nvidia<minor>``.
        name: Product name.
        energy_mj: Total energy since the driver loaded, mJ.
        power_mw: Current power draw, mW.
        energy_supported: False makes the energy counter answer NOT_SUPPORTED.
        lost: True makes every call on the device answer GPU_IS_LOST.
        processes: Compute processes running on it.
        mig_slices: MIG GPU instance id → slices; empty means MIG disabled.
    """

    index: int
    uuid: str
    minor: int
    name: str = "NVIDIA H100 80GB HBM3"
    energy_mj: int = 0
    power_mw: int = 0
    energy_supported: bool = True
    lost: bool = False
    processes: list[SimProcess] = field(default_factory=list)
    mig_slices: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class SimState:
    """The whole simulated NVML.

    Attributes:
        devices: GPUs in index order.
        errors: NVML function name → return code name (e.g. "FUNCTION_NOT_FOUND") or number,
            returned by every call of that function.
        driver_version: What ``nvmlSystemGetDriverVersion`` answers.
    """

    devices: list[SimDevice] = field(default_factory=list)
    errors: dict[str, str | int] = field(default_factory=dict)
    driver_version: str = "580.105.08"

    def device(self, index: int) -> SimDevice:
        """Return the device with NVML index ``index``."""
        return next(d for d in self.devices if d.index == index)


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"value cannot hold quotes or newlines: {value!r}")
    return f'"{value}"' if " " in value or not value else value


def render_state(state: SimState) -> str:
    """Return the state file's text."""
    lines = [f"driver version={_quote(state.driver_version)}"]
    for d in state.devices:
        lines.append(
            f"device index={d.index} uuid={_quote(d.uuid)} minor={d.minor} name={_quote(d.name)}"
            f" energy_mj={d.energy_mj} power_mw={d.power_mw}"
            f" energy={'supported' if d.energy_supported else 'not_supported'}"
            f" status={'lost' if d.lost else 'ok'} mig={1 if d.mig_slices else 0}"
        )
        for gi, slices in d.mig_slices.items():
            lines.append(f"mig device={d.index} gi={gi} slices={slices}")
        for p in d.processes:
            line = f"process device={d.index} pid={p.pid} used_mem={p.used_mem}"
            if p.gpu_instance is not None:
                line += f" gi={p.gpu_instance} ci=0"
            if p.sm_util is not None:
                line += f" sm_util={p.sm_util} mem_util={p.mem_util}"
            lines.append(line)
    for function, code in state.errors.items():
        lines.append(f"error function={function} code={code}")
    return "\n".join(lines) + "\n"


def write_state(path: str | Path, state: SimState) -> None:
    """Replace the state file at ``path`` atomically."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(render_state(state))
    os.replace(tmp, target)


def devices_from_nvidia_smi_xml(path: str | Path) -> list[SimDevice]:
    """Return simulated devices shaped like a real ``nvidia-smi -q -x`` capture.

    Takes product name, UUID, minor number and instant power draw (W → mW) of each ``<gpu>``;
    energy starts at 0.
    """
    root = ET.parse(path).getroot()
    devices = []
    for index, gpu in enumerate(root.iter("gpu")):
        power = gpu.findtext("gpu_power_readings/instant_power_draw", "0 W").split()[0]
        devices.append(
            SimDevice(
                index=index,
                uuid=gpu.findtext("uuid", ""),
                minor=int(gpu.findtext("minor_number", str(index))),
                name=gpu.findtext("product_name", ""),
                power_mw=round(float(power) * 1000) if power != "N/A" else 0,
            )
        )
    return devices
