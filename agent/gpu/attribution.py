"""Attribute each GPU's energy over an interval to Slurm jobs (DESIGN.md decision 4).

Rules, applied per GPU and interval by :func:`attribute_device`; every split is an exact
largest-remainder split (:func:`jobenergy.core.split.split_uj`), so
``sum(jobs) + unattributed == measured`` always:

1. **Which sample decides.** The current sample's holders (allocated jobs and jobs with
   processes on the GPU). If nobody holds the GPU now but a job did at the previous sample,
   the previous sample decides: the job ended during the interval, and the interval up to its
   end (and the GPU's drain after it) is its cost. If nobody holds it at either, all of the
   energy is unattributed.
2. **Allocated GPU, one job.** The job pays for the GPU, busy or idle.
3. **Several participants** (processes of several jobs through sharding/MPS, an allocation
   plus another job's process, or a process outside any job): each participant's weight is
   the summed SM utilisation of its processes (an allocated job without a process weighs 0);
   when no participant has utilisation above 0 (idle, or the driver lacks per-process
   utilisation), they split evenly. The share of processes outside any job is unattributed.
4. **MIG.** The GPU's energy (the counter covers the whole GPU) is split over its GPU
   instances by their number of slices (e.g. 3g.40gb weighs 3, 1g.10gb weighs 1); each
   instance's part goes to the jobs with processes in it by rule 3. An instance without any
   job process is unattributed: Slurm hands MIG instances out as ``/dev/nvidia-caps`` devices,
   which the allocation sources do not read yet.
5. **Unallocated GPU** without job processes: unattributed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jobenergy.agent.attribution import StaticFloor
from jobenergy.agent.gpu.allocation import GpuAllocation
from jobenergy.agent.gpu.nvml import NvmlSensor
from jobenergy.agent.gpu.samples import GpuDeviceSample
from jobenergy.agent.jobmap import JobMapEntry
from jobenergy.agent.records import SourceSample
from jobenergy.core.counters import counter_delta
from jobenergy.core.errors import SensorUnavailable
from jobenergy.core.split import split_uj

logger = logging.getLogger(__name__)

_OUTSIDE = ""  # participant key for processes outside any job (never a valid job id)


@dataclass(slots=True)  # not frozen: built per GPU per sample (agent/readings.py)
class ProcessState:
    """A GPU process as attribution sees it.

    Attributes:
        job_id: The Slurm job it belongs to, or None.
        sm_util: SM utilisation, percent, or None when unknown.
        gpu_instance: MIG GPU instance id, or None.
    """

    job_id: str | None
    sm_util: int | None = None
    gpu_instance: int | None = None


@dataclass(slots=True)  # not frozen: built per GPU per sample (agent/readings.py)
class DeviceState:
    """Who used one GPU at one sample.

    Attributes:
        allocated: Jobs the GPU is allocated to.
        processes: Its compute processes.
        mig_slices: MIG GPU instance id → slices; empty outside MIG mode.
    """

    allocated: frozenset[str] = frozenset()
    processes: tuple[ProcessState, ...] = ()
    mig_slices: Mapping[int, int] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        """Return whether any job holds the GPU (allocation or a job process)."""
        return bool(self.allocated) or any(p.job_id is not None for p in self.processes)


def _split_participants(
    total_uj: int, allocated: Iterable[str], processes: Iterable[ProcessState]
) -> tuple[dict[str, int], int]:
    """Split by summed SM utilisation per participant, else evenly (rule 3)."""
    util: dict[str, int] = {job: 0 for job in sorted(allocated)}
    for p in processes:
        key = p.job_id if p.job_id is not None else _OUTSIDE
        util[key] = util.get(key, 0) + (p.sm_util or 0)
    if not util:
        return {}, total_uj
    if _OUTSIDE in util:
        util[_OUTSIDE] = util.pop(_OUTSIDE)  # last: ties of the remainder favour jobs
    weights = util if any(util.values()) else dict.fromkeys(util, 1)
    parts = split_uj(total_uj, weights)
    outside = parts.pop(_OUTSIDE, 0)
    return parts, outside


def attribute_device(
    delta_uj: int, prev: DeviceState | None, cur: DeviceState
) -> tuple[dict[str, int], int]:
    """Split one GPU's energy over an interval between jobs (rules in the module docstring).

    Args:
        delta_uj: The GPU's measured energy over the interval, µJ (>= 0).
        prev: The GPU's state at the interval's start, or None for the first interval.
        cur: The GPU's state at the interval's end.

    Returns:
        Energy per job id, µJ, and the unattributed energy, µJ; they add up to ``delta_uj``.
    """
    state = cur if cur.held or prev is None or not prev.held else prev
    if not state.held and not state.processes:
        return {}, delta_uj
    slices = {gi: n for gi, n in state.mig_slices.items() if n > 0}
    if not slices:
        return _split_participants(delta_uj, state.allocated, state.processes)
    jobs: dict[str, int] = {}
    unattributed = 0
    for gi, part_uj in split_uj(delta_uj, dict(sorted(slices.items()))).items():
        in_gi = [p for p in state.processes if p.gpu_instance == gi]
        gi_jobs, gi_outside = _split_participants(part_uj, (), in_gi)
        unattributed += gi_outside
        for job, uj in gi_jobs.items():
            jobs[job] = jobs.get(job, 0) + uj
    return jobs, unattributed


def attribute_over_time(
    delta_uj: int,
    static_uj: int,
    prev: DeviceState | None,
    cur: DeviceState,
    alive: Mapping[str, int],
    span_ns: int,
) -> tuple[dict[str, int], int]:
    """Split one GPU's energy when a holder started or ended inside the interval.

    A job pays for the GPU while it exists (DESIGN.md decision 16): the static part (the
    GPU's idle power × the interval, :class:`~jobenergy.agent.attribution.StaticFloor`) by
    each holder's share × the time it lived, the time nobody held it being unattributed; the
    dynamic part (what the GPU drew above idle: somebody's work) over the holders by SM
    utilisation × time lived (by time lived when no utilisation is known). Holders are those
    of this sample (rules 1-4) and, among the previous sample's, the ones that ended inside
    the interval (or all of them when nobody holds it now), so a job that ended and the one
    that took the GPU after it each get their part.

    Args:
        delta_uj: The GPU's energy over the interval, µJ.
        static_uj: Its idle energy over the interval, µJ (clamped to ``delta_uj``).
        prev: Who held it at the previous sample, or None.
        cur: Who holds it now.
        alive: Jobs that lived only part of the interval → ns they lived (others: all).
        span_ns: The interval's length, ns.
    """
    by_cur = attribute_device(delta_uj, None, cur)[0] if cur.held else {}
    by_prev = attribute_device(delta_uj, None, prev)[0] if prev is not None and prev.held else {}
    time_w: dict[str, int] = {j: e * alive.get(j, span_ns) for j, e in by_cur.items()}
    for job_id, energy_uj in by_prev.items():
        if job_id not in time_w and (job_id in alive or not cur.held):
            time_w[job_id] = energy_uj * alive.get(job_id, span_ns)
    time_w = {j: w for j, w in time_w.items() if w > 0}
    if not time_w:
        return {}, delta_uj
    static_uj = max(0, min(delta_uj, static_uj))
    weights = dict(time_w)
    weights[_OUTSIDE] = max(0, delta_uj * span_ns - sum(time_w.values()))
    shares = split_uj(static_uj, weights)
    # What the GPU drew above idle is the work of whoever drove it: by the holders' SM
    # utilisation × time held when known (an idle holder draws nothing above idle), else by
    # time held.
    util_w = {
        j: _sm_util(cur if j in by_cur else prev, j) * alive.get(j, span_ns) for j in time_w
    }
    dynamic_w = util_w if any(util_w.values()) else time_w
    for job_id, part in split_uj(delta_uj - static_uj, dynamic_w).items():
        shares[job_id] = shares.get(job_id, 0) + part
    unattributed = shares.pop(_OUTSIDE, 0)
    return {j: e for j, e in shares.items() if e}, unattributed


def _sm_util(state: DeviceState | None, job_id: str) -> int:
    """Return the summed SM utilisation of a job's processes on a GPU (0 when unknown)."""
    if state is None:
        return 0
    return sum(p.sm_util or 0 for p in state.processes if p.job_id == job_id)


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """Every GPU and who used it at one sample.

    Attributes:
        time_ns: ``time.monotonic_ns()`` when the sample was taken.
        devices: UUID → the GPU's reading.
        states: UUID → who used it.
    """

    time_ns: int
    devices: dict[str, GpuDeviceSample] = field(default_factory=dict)
    states: dict[str, DeviceState] = field(default_factory=dict)


class GpuAccounting:
    """GPU sensor + job allocation + attribution, for the agent's sampling loop.

    When NVML is unavailable (no driver, mode "off") this stays usable: ``available`` is
    False, the reason is logged once, and samples are empty.

    Args:
        nvml_mode: :class:`NvmlSensor` mode: "auto", "power" or "off".
        procfs_root: Where ``/proc`` is mounted.
        cgroup_root: Where ``/sys/fs/cgroup`` is mounted.
        gpu_map_dir: The prolog's GPU map directory, or None.
        node: Slurm node name (``slurm_<node>`` cgroup layouts), or None.
        static_power_w: Each GPU's idle power, W, for the intervals a job starts or ends
            in; learned as the lowest power seen when None.
    """

    def __init__(
        self,
        nvml_mode: str = "auto",
        procfs_root: str | Path = "/proc",
        cgroup_root: str | Path = "/sys/fs/cgroup",
        gpu_map_dir: str | Path | None = None,
        node: str | None = None,
        static_power_w: float | None = None,
    ) -> None:
        self._sensor: NvmlSensor | None
        self._static_power_w = static_power_w
        self.unavailable_reason: str | None = None
        try:
            self._sensor = NvmlSensor(nvml_mode)
        except SensorUnavailable as err:
            self._sensor = None
            self.unavailable_reason = str(err)
            logger.info("GPU energy off sensor=nvml reason=%s", err)
        self._allocation = GpuAllocation(procfs_root, cgroup_root, gpu_map_dir, node)
        self._resets: dict[str, int] = {}
        self._last_good: dict[str, GpuDeviceSample] = {}  # uuid → last readable sample
        self._last_good_ns: dict[str, int] = {}  # uuid → when (monotonic ns)
        self._floors: dict[str, StaticFloor] = {}  # uuid → the GPU's idle power

    @property
    def available(self) -> bool:
        """Return whether NVML was opened."""
        return self._sensor is not None

    @property
    def errors_total(self) -> dict[str, int]:
        """Return failed NVML calls by reason, and ``counter_reset`` drops seen (for metrics)."""
        errors = dict(self._sensor.errors_total) if self._sensor is not None else {}
        if self._resets:
            errors["counter_reset"] = sum(self._resets.values())
        return errors

    def sample(
        self,
        job_ids: Iterable[str],
        job_map: Mapping[str, JobMapEntry] | None = None,
        wall_ns: int | None = None,
    ) -> GpuSnapshot:
        """Read every GPU once and resolve who uses it.

        Args:
            job_ids: Slurm jobs with a cgroup on this node now.
            job_map: The hooks' job map for this sample (None: read from ``gpu_map_dir``).
            wall_ns: Now, epoch ns (jobs the epilog marked ended by then hold nothing).
        """
        now_ns = time.monotonic_ns()
        if self._sensor is None:
            return GpuSnapshot(now_ns)
        devices = self._sensor.read()
        holders = self._allocation.resolve(job_ids, job_map, wall_ns)
        pid_jobs = self._allocation.jobs_of_pids(p.pid for d in devices for p in d.processes)
        snapshot = GpuSnapshot(now_ns)
        for dev in devices:
            snapshot.devices[dev.uuid] = dev
            snapshot.states[dev.uuid] = DeviceState(
                allocated=holders.get(dev.minor, frozenset()),
                processes=tuple(
                    ProcessState(pid_jobs.get(p.pid), p.sm_util, p.gpu_instance)
                    for p in dev.processes
                ),
                mig_slices=dev.mig_slices,
            )
        return snapshot

    def attribute(
        self,
        prev: GpuSnapshot | None,
        cur: GpuSnapshot,
        alive: Mapping[str, int] | None = None,
        span_ns: int = 0,
    ) -> list[SourceSample]:
        """Return each GPU's energy between two snapshots, attributed to jobs.

        A GPU without an energy reading in either snapshot (lost, failed read, new) is left
        out of this interval. A counter that went down was reset (driver reload): only the
        energy since the reset counts, and the source carries ``resets=1``. A job that lived
        only part of the interval (``alive``: ns of ``span_ns``, :mod:`..lifetime`) keeps
        that part of its share; the rest is unattributed.
        """
        sources = []
        for uuid, dev in cur.devices.items():
            if dev.energy_uj is None:
                continue  # failed read: the energy stays in the counter for the next interval
            # Measure from the last good reading, not the previous snapshot: a failed read in
            # between must delay that energy, never drop it.
            before = self._last_good.get(uuid)
            before_ns = self._last_good_ns.get(uuid, prev.time_ns if prev else cur.time_ns)
            if before is None and prev is not None:
                before = prev.devices.get(uuid)
            self._last_good_ns[uuid] = cur.time_ns
            self._last_good[uuid] = dev
            if before is None or before.energy_uj is None:
                continue
            if dev.estimated != before.estimated:
                continue  # switched to power integration: the two counters are unrelated
            delta = counter_delta(before.energy_uj, dev.energy_uj, max_range_uj=None)
            if delta.reset:
                self._resets[uuid] = self._resets.get(uuid, 0) + 1
                logger.warning(
                    "GPU energy counter went back gpu=%s prev_uj=%s cur_uj=%s",
                    uuid,
                    before.energy_uj,
                    dev.energy_uj,
                )
            prev_state = prev.states.get(uuid) if prev else None
            floor = self._floors.get(uuid)
            if floor is None:
                floor = self._floors[uuid] = StaticFloor(self._static_power_w)
            static_uj = floor.static_uj(delta.energy_uj, cur.time_ns - before_ns)
            if alive and span_ns > 0:
                jobs, unattributed = attribute_over_time(
                    delta.energy_uj, static_uj, prev_state, cur.states[uuid], alive, span_ns
                )
            else:
                jobs, unattributed = attribute_device(
                    delta.energy_uj, prev_state, cur.states[uuid]
                )
            sources.append(
                SourceSample(
                    component="gpu",
                    source=f"gpu/{uuid}",
                    device_name=dev.name[:128] or None,
                    measured_uj=delta.energy_uj,
                    jobs_uj=jobs,
                    unattributed_uj=unattributed,
                    estimated=dev.estimated,
                    resets=int(delta.reset),
                )
            )
        return sources

    def close(self) -> None:
        """Shut NVML down."""
        if self._sensor is not None:
            self._sensor.close()
