"""One sample of a node: every energy counter, the Slurm cgroups and /proc/stat, read once.

The sampler owns the readers (RAPL, Slurm cgroups, NVML through :mod:`.gpu`) and turns their
failures into logged, counted errors so one broken source never stops the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobenergy.agent.cgroups import SlurmCgroups
from jobenergy.agent.jobmap import JobMapEntry, JobMapReader
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.procstat import read_cpu_times
from jobenergy.agent.readings import CgroupSnapshot, CpuTimes, Reading
from jobenergy.agent.sensors.rapl import RaplSensor
from jobenergy.core.errors import SensorError, SensorUnavailable

if TYPE_CHECKING:  # the type only: the daemon never imports pydantic-settings
    from jobenergy.agent.settings import AgentSettings  # (agent/settings_child.py)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Sample:
    """Everything read at one instant."""

    wall: datetime
    mono_ns: int
    readings: dict[str, Reading]
    cgroups: CgroupSnapshot
    cpu: CpuTimes | None
    gpu: Any = None  # jobenergy.agent.gpu.GpuSnapshot when NVML is on
    errors: list[str] = field(default_factory=list)
    job_map: dict[str, JobMapEntry] = field(default_factory=dict)  # the hooks' (gpu_map_dir)
    bmc: Any = None  # jobenergy.agent.bmc_poller.BmcSnapshot, the BMC's latest (bmc on)

    @property
    def wall_ns(self) -> int:
        """The sample's wall time, epoch ns."""
        return _epoch_ns(self.wall)


class Sampler:
    """Reads a node's sources; :meth:`take` returns one :class:`Sample`."""

    def __init__(self, settings: AgentSettings, metrics: AgentMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cgroups = SlurmCgroups(settings.cgroup_root, node=settings.node)
        self.job_map = JobMapReader(settings.gpu_map_dir)
        self.rapl: RaplSensor | None = None
        try:
            self.rapl = RaplSensor(settings.sysfs_root)
        except SensorUnavailable as err:
            logger.warning("RAPL sensor unavailable, CPU/DRAM energy off: %s", err)
        self.gpu = self._make_gpu()

    def _make_gpu(self) -> Any:
        if self.settings.nvml == "off":
            return None
        from jobenergy.agent.gpu import GpuAccounting  # pynvml is loaded only when GPUs are wanted

        try:
            gpu = GpuAccounting(
                nvml_mode=self.settings.nvml,
                procfs_root=self.settings.procfs_root,
                cgroup_root=self.settings.cgroup_root,
                gpu_map_dir=self.settings.gpu_map_dir,
                node=self.settings.node,
                static_power_w=self.settings.gpu_static_power_w,
            )
        except SensorUnavailable as err:
            logger.warning("GPU sensor unavailable, GPU energy off: %s", err)
            return None
        if not gpu.available:
            logger.warning("GPU sensor unavailable, GPU energy off: %s", gpu.unavailable_reason)
            return None
        return gpu

    # -- sampling ---------------------------------------------------------------------
    def take(self, prev: Sample | None, floor: datetime | None = None) -> Sample:
        """Read every counter, the job cgroups and /proc/stat once.

        Args:
            prev: The previous sample (its wall time bounds this one's from below).
            floor: Without ``prev``, the last wall time a previous run of the agent sent.
        """
        errors: list[str] = []
        readings: dict[str, Reading] = {}
        # The sample's time is when the counters were read: reading the cgroups, NVML and
        # /proc after them can take a while on a loaded node.
        mono_ns = time.monotonic_ns()
        read_at = datetime.now(UTC)
        if self.rapl is not None:
            good, failed = self.rapl.read_partial()
            readings = {r.source: r for r in good}
            for err in failed:
                errors.append(str(err))
                self.metrics.sensor_errors.labels("rapl").inc()
                logger.error("RAPL read failed sensor=rapl err=%s", err)
            if any(getattr(err, "vanished", False) for err in failed):
                self._rescan_rapl()
        cgroups = self.cgroups.snapshot()
        try:
            cpu = read_cpu_times(self.settings.procfs_root)
        except (SensorError, OSError) as err:
            errors.append(str(err))
            cpu = None
        job_map = self.job_map.read()
        gpu = None
        if self.gpu is not None:
            try:
                gpu = self.gpu.sample(cgroups.jobs.keys(), job_map, time.time_ns())
                self.metrics.set_gpu_errors(self.gpu.errors_total)
            except SensorError as err:
                errors.append(str(err))
                self.metrics.sensor_errors.labels("nvml").inc()
                logger.error("GPU read failed sensor=nvml err=%s", err)
        self.metrics.samples.inc()
        self.metrics.jobs.set(len(cgroups.jobs))
        return Sample(
            _wall_now(read_at, mono_ns, prev, floor),
            mono_ns,
            readings,
            cgroups,
            cpu,
            gpu,
            errors,
            job_map,
        )

    def _rescan_rapl(self) -> None:
        assert self.rapl is not None
        try:
            self.rapl.rescan()
        except (SensorError, SensorUnavailable) as err:
            logger.error("RAPL rescan failed sensor=rapl err=%s", err)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _wall_now(
    wall: datetime, mono_ns: int, prev: Sample | None, floor: datetime | None
) -> datetime:
    """Return the wall time of a sample, never before the previous sample's.

    After the wall clock steps back (NTP, an operator), intervals continue from the last
    sample by monotonic time until the wall clock catches up, so batches stay in order and no
    interval is empty or negative. The first sample after a restart is never before what the
    last run already sent (the collector refuses energy for a span it has stored).
    """
    if prev is not None and wall <= prev.wall:
        wall = prev.wall + timedelta(microseconds=max(1, (mono_ns - prev.mono_ns) // 1000))
    elif prev is None and floor is not None and wall <= floor:
        wall = floor + timedelta(microseconds=1)
    return wall
