"""Read NVIDIA GPUs through NVML (pynvml from nvidia-ml-py, over ``libnvidia-ml.so.1``).

Energy comes from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta
and newer). Only where that answers NOT_SUPPORTED (or the driver lacks the function) is
``nvmlDeviceGetPowerUsage`` (mW) integrated over ``time.monotonic_ns`` into a per-device
counter marked estimated (DESIGN.md decision 3).

Errors are translated here: a library that does not load, or a driver that is not loaded, is
:class:`SensorUnavailable` at construction; a GPU that is lost is marked ``lost`` and no longer
called while the other GPUs keep being read; a function the driver lacks turns that feature
off. Each failure is logged once per device and reason and counted in :attr:`errors_total`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from jobenergy.agent.gpu.samples import GpuDeviceSample, GpuProcess
from jobenergy.core.errors import ConfigError, SensorUnavailable
from jobenergy.core.units import mj_to_uj

logger = logging.getLogger(__name__)

MODES = ("auto", "power", "off")


@dataclass(slots=True)
class _Device:
    """Cached handle, identity and per-device state between reads."""

    index: int
    handle: Any
    uuid: str
    minor: int
    name: str
    use_counter: bool = True
    lost: bool = False
    estimated_uj: int = 0
    last_power_mw: int | None = None
    last_power_ns: int | None = None
    last_util_ts: int = 0
    mig_slices: dict[int, int] = field(default_factory=dict)


class NvmlSensor:
    """Every NVIDIA GPU on this node.

    Args:
        mode: "auto" (hardware energy counter, power integration only where it is not
            supported), "power" (always integrate power: for comparisons), or "off".

    Raises:
        ConfigError: If ``mode`` is unknown.
        SensorUnavailable: If ``mode`` is "off", nvidia-ml-py is not installed,
            ``libnvidia-ml.so.1`` does not load or NVML cannot be initialised.
    """

    name = "nvml"

    def __init__(self, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown NVML mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "off":
            raise SensorUnavailable("NVML sensor disabled by configuration (mode=off)")
        try:
            import pynvml
        except ImportError as err:
            raise SensorUnavailable("nvidia-ml-py (import pynvml) is not installed") from err
        self._nvml = pynvml
        self.mode = mode
        #: Failed NVML calls by reason (pynvml error name without "NVMLError_"), for metrics.
        self.errors_total: dict[str, int] = {}
        self._logged: set[tuple[int, str]] = set()
        self._process_list = True
        self._process_util = True
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as err:
            raise SensorUnavailable(
                "NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this node)"
            ) from err
        except pynvml.NVMLError as err:
            raise SensorUnavailable(f"NVML initialisation failed: {err}") from err
        try:
            self.driver_version: str = pynvml.nvmlSystemGetDriverVersion()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as err:
            pynvml.nvmlShutdown()
            raise SensorUnavailable(f"NVML cannot list GPUs: {err}") from err
        self._devices: list[_Device] = []
        for index in range(count):
            try:
                self._devices.append(self._open(index))
            except pynvml.NVMLError as err:
                self._failed(index, err)
        self._closed = False

    def _open(self, index: int) -> _Device:
        nv = self._nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        dev = _Device(
            index=index,
            handle=handle,
            uuid=nv.nvmlDeviceGetUUID(handle),
            minor=nv.nvmlDeviceGetMinorNumber(handle),
            name=nv.nvmlDeviceGetName(handle),
            use_counter=self.mode == "auto",
        )
        dev.mig_slices = self._mig_slices(handle)
        return dev

    def _mig_slices(self, handle: Any) -> dict[int, int]:
        """Return MIG GPU instance id → slices; {} when MIG is off or not supported."""
        nv = self._nvml
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
            if current != nv.NVML_DEVICE_MIG_ENABLE:
                return {}
            slices: dict[int, int] = {}
            for i in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
                except nv.NVMLError_NotFound:
                    continue
                gi = nv.nvmlDeviceGetGpuInstanceId(mig)
                slices[gi] = nv.nvmlDeviceGetAttributes_v2(mig).gpuInstanceSliceCount
            return slices
        except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound):
            return {}

    def _failed(self, index: int, err: Exception, level: int = logging.WARNING) -> str:
        """Count ``err`` and log it once per device and reason; return the reason."""
        reason = type(err).__name__.removeprefix("NVMLError_")
        self.errors_total[reason] = self.errors_total.get(reason, 0) + 1
        if (index, reason) not in self._logged:
            self._logged.add((index, reason))
            logger.log(
                level, "NVML call failed gpu_index=%s reason=%s error=%s", index, reason, err
            )
        return reason

    @property
    def device_count(self) -> int:
        """Number of GPUs opened at start."""
        return len(self._devices)

    def read(self) -> list[GpuDeviceSample]:
        """Return every GPU's cumulative energy and compute processes now.

        One energy read and at most one process list (plus one utilisation query) per GPU.
        """
        nv = self._nvml
        samples = []
        for dev in self._devices:
            energy_uj: int | None = None
            processes: tuple[GpuProcess, ...] = ()
            if not dev.lost:
                try:
                    energy_uj = self._energy_uj(dev)
                    processes = self._processes(dev)
                except nv.NVMLError_GpuIsLost as err:
                    dev.lost = True
                    energy_uj = None
                    self._failed(dev.index, err, logging.ERROR)
                except nv.NVMLError as err:
                    self._failed(dev.index, err)
            samples.append(
                GpuDeviceSample(
                    index=dev.index,
                    uuid=dev.uuid,
                    minor=dev.minor,
                    name=dev.name,
                    energy_uj=energy_uj,
                    estimated=not dev.use_counter,
                    lost=dev.lost,
                    processes=processes,
                    mig_slices=dev.mig_slices,
                )
            )
        return samples

    def _energy_uj(self, dev: _Device) -> int | None:
        nv = self._nvml
        if dev.use_counter:
            try:
                return mj_to_uj(nv.nvmlDeviceGetTotalEnergyConsumption(dev.handle))
            except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound) as err:
                dev.use_counter = False
                self._failed(dev.index, err, logging.INFO)
                logger.info(
                    "GPU energy counter unavailable, integrating power gpu_index=%s uuid=%s",
                    dev.index,
                    dev.uuid,
                )
        power_mw = nv.nvmlDeviceGetPowerUsage(dev.handle)
        now_ns = time.monotonic_ns()
        if dev.last_power_mw is not None and dev.last_power_ns is not None:
            # Trapezoid between the two power readings: mW × ns / 1e6 = µJ.
            elapsed_ns = now_ns - dev.last_power_ns
            dev.estimated_uj += (dev.last_power_mw + power_mw) * elapsed_ns // 2_000_000
        dev.last_power_mw, dev.last_power_ns = power_mw, now_ns
        return dev.estimated_uj

    def _processes(self, dev: _Device) -> tuple[GpuProcess, ...]:
        nv = self._nvml
        if not self._process_list:
            return ()
        try:
            infos = nv.nvmlDeviceGetComputeRunningProcesses(dev.handle)
        except (
            nv.NVMLError_FunctionNotFound,
            nv.NVMLError_NotSupported,
            nv.NVMLLibraryMismatchError,
        ) as err:
            self._process_list = False
            self._failed(dev.index, err, logging.INFO)
            return ()
        if not infos:
            return ()
        utils = self._utilisation(dev) if self._process_util else {}
        processes = []
        for info in infos:
            gi = info.gpuInstanceId
            processes.append(
                GpuProcess(
                    pid=info.pid,
                    sm_util=utils.get(info.pid),
                    gpu_instance=gi if dev.mig_slices and gi != 0xFFFFFFFF else None,
                )
            )
        return tuple(processes)

    def _utilisation(self, dev: _Device) -> dict[int, int]:
        """Return pid → mean SM utilisation over NVML's samples since the previous read."""
        nv = self._nvml
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(dev.handle, dev.last_util_ts)
        except nv.NVMLError_NotFound:
            return {}  # no sample newer than the last one: nothing ran since
        except (nv.NVMLError_FunctionNotFound, nv.NVMLError_NotSupported) as err:
            self._process_util = False
            self._failed(dev.index, err, logging.INFO)
            return {}
        sums: dict[int, list[int]] = {}
        for s in samples:
            acc = sums.setdefault(s.pid, [0, 0])
            acc[0] += s.smUtil
            acc[1] += 1
            dev.last_util_ts = max(dev.last_util_ts, s.timeStamp)
        return {pid: total // n for pid, (total, n) in sums.items()}

    def close(self) -> None:
        """Shut NVML down (the library stays loaded, as pynvml does)."""
        if not self._closed:
            self._closed = True
            self._nvml.nvmlShutdown()
