"""Plain data passed from the readers (sensors, cgroups, /proc) to attribution.

Readers return these; attribution consumes them. Nothing here does I/O.

They are never changed once made. The ones made per job or per GPU at every sample
(:class:`JobCgroup` here, ``JobUsage``, the GPU samples and states) are plain slotted
dataclasses, not ``frozen``: a frozen dataclass sets each field through
``object.__setattr__``, which made building them ~4x dearer (1.8 µs for a ``JobCgroup``, a
tenth of the agent's CPU per sample at 32 jobs and 8 GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reading:
    """One cumulative energy counter, read now.

    Attributes:
        component: "cpu", "dram", "gpu" or "psys".
        source: Stable name of the counter on this node, e.g. "package-0",
            "package-0/dram", "gpu/GPU-<uuid>".
        energy_uj: Cumulative counter value, µJ.
        max_range_uj: Value after which the counter wraps to 0 (RAPL
            ``max_energy_range_uj``); None for counters that do not wrap (NVML).
        estimated: The counter is integrated from power samples, not read from hardware.
    """

    component: str
    source: str
    energy_uj: int
    max_range_uj: int | None = None
    estimated: bool = False


@dataclass(slots=True)  # not frozen: built per job per sample (see the module docstring)
class JobCgroup:
    """A Slurm job's cgroup as seen at one sample.

    Attributes:
        job_id: Slurm job id as it appears in the folder name: "123" for ``job_123`` or a
            SLUID such as "s0123456789abc" (Slurm >= 26.05 names folders ``job_<SLUID>``).
        uid: Owner's uid when the layout shows it (v1 ``uid_U``), else None.
        cpu_usage_ns: Cumulative CPU time of the job's cgroup, ns (v1 ``cpuacct.usage``;
            v2 ``cpu.stat`` ``usage_usec`` × 1000).
        cpus: Allocated CPU ids from the job's cpuset (empty if unknown).
        steps: Step folder names without the prefix ("batch", "0", "extern").
        path: The job's cgroup folder (for diagnostics).
        step_usage_ns: Cumulative CPU time of each step's cgroup, ns, by step name (v1
            ``step_X/cpuacct.usage``; v2 ``step_X/cpu.stat`` ``usage_usec`` × 1000). Steps
            whose folder vanished before it was read are absent.
        born_ns: When the job's cgroup folder was made, epoch ns (its ctime, read when the
            agent first saw it; cgroupfs sets it at mkdir), or None if unknown.
    """

    job_id: str
    uid: int | None
    cpu_usage_ns: int
    cpus: frozenset[int] = frozenset()
    steps: tuple[str, ...] = ()
    path: str = ""
    step_usage_ns: dict[str, int] = field(default_factory=dict)
    born_ns: int | None = None


@dataclass(frozen=True, slots=True)
class CgroupSnapshot:
    """Every Slurm job cgroup on this node at one sample.

    Attributes:
        version: 1 or 2 (cgroup hierarchy found).
        jobs: Job id → its cgroup.
        root_usage_ns: Cumulative CPU time of the Slurm root cgroup (v1 ``slurm[_<node>]``
            under cpuacct; v2 ``[<node>_]slurmstepd.scope``). A parent keeps the usage of
            removed children, so this minus the live children's usage tells what a job whose
            cgroup vanished used since the previous sample. None when no root exists.
        other_usage_ns: Cumulative CPU time of non-job children of the root (v2 ``system``,
            i.e. slurmstepd itself), which is not any job's.
        ended_ns: Jobs of the previous snapshot whose folder is gone now → when it was
            removed, epoch ns (an upper bound: the parent folder's ctime).
    """

    version: int
    jobs: dict[str, JobCgroup] = field(default_factory=dict)
    root_usage_ns: int | None = None
    other_usage_ns: int = 0
    ended_ns: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Node-wide CPU time from ``/proc/stat`` (first ``cpu`` line), ns.

    Attributes:
        busy_ns: user + nice + system + irq + softirq + steal (guest is inside user).
        total_ns: busy + idle + iowait.
        ncpus: Number of ``cpuN`` lines (online CPUs).
    """

    busy_ns: int
    total_ns: int
    ncpus: int
