"""Which Slurm job holds which GPU, and which job a GPU process belongs to.

GPUs are named by minor number (``/dev/nvidia<minor>``), which is what Slurm's gres/gpu with
``File=/dev/nvidia[0-7]`` hands out. Sources, for each job the first that answers:

1. The hooks' job map (:mod:`jobenergy.agent.jobmap`): one file per job, named
   ``<job_id>``, whose first line holds comma-separated GPU ids (e.g. ``0,1``). Every job
   there counts, also one whose cgroup is already gone, until the epilog's ``end`` mark:
   from then on the job holds nothing (it pays until its end, not while the file lingers).
2. ``SLURM_JOB_GPUS`` (else ``SLURM_STEP_GPUS``) in ``<procfs_root>/<pid>/environ`` of one
   process of the job's cgroup. ``CUDA_VISIBLE_DEVICES`` is ignored: under
   ``ConstrainDevices=yes`` it is renumbered from 0 and does not identify the device.
3. The cgroup v1 devices controller: ``devices/slurm[_<node>]/uid_U/job_J/devices.list``
   lines ``c 195:N rwm`` (major 195 is the NVIDIA driver; minors 254/255 are nvidia-modeset and
   nvidiactl, not GPUs). cgroup v2 enforces devices with eBPF, which cannot be read back.

A job's answer from sources 2 and 3 is cached while the job runs (allocations do not change).
GPU processes map to jobs through ``<procfs_root>/<pid>/cgroup``, parsed by
:func:`jobenergy.agent.cgroupfs.job_id_from_proc_cgroup`: only a job folder right under Slurm's
root cgroup names a job, never a ``job_<N>`` folder a user made in a delegated subtree.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from jobenergy.agent.cgroupfs import hierarchy_count, job_id_from_proc_cgroup, read_text
from jobenergy.agent.jobmap import JobMapEntry, parse_gpu_ids, read_job_map

logger = logging.getLogger(__name__)

NVIDIA_MAJOR = 195
_NOT_GPU_MINORS = frozenset({254, 255})  # nvidia-modeset, nvidiactl
_V1_CONTROLLERS = ("devices", "freezer", "cpuacct", "memory", "cpuset")
_DEVICE_LINE = re.compile(r"^c\s+(\d+):(\d+)\s+\w+$")


def parse_devices_list(text: str) -> frozenset[int]:
    """Return the NVIDIA GPU minors allowed by a v1 ``devices.list``.

    ``a *:* rwm`` (everything allowed: devices not constrained) says nothing about GPUs and
    yields no minors.
    """
    minors = set()
    for line in text.splitlines():
        m = _DEVICE_LINE.match(line.strip())
        if m and int(m.group(1)) == NVIDIA_MAJOR and int(m.group(2)) not in _NOT_GPU_MINORS:
            minors.add(int(m.group(2)))
    return frozenset(minors)


def gpus_from_environ(data: bytes) -> frozenset[int] | None:
    """Return ``SLURM_JOB_GPUS`` (else ``SLURM_STEP_GPUS``) from a NUL-separated environ."""
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (b"SLURM_JOB_GPUS", b"SLURM_STEP_GPUS"):
            env[key] = value.decode("ascii", "replace")
    value = env.get(b"SLURM_JOB_GPUS", env.get(b"SLURM_STEP_GPUS"))
    return None if value is None else parse_gpu_ids(value)


class GpuAllocation:
    """Resolve GPU allocations and GPU processes to Slurm jobs from files under given roots.

    Args:
        procfs_root: Where ``/proc`` is mounted.
        cgroup_root: Where ``/sys/fs/cgroup`` is mounted.
        gpu_map_dir: The prolog's map directory, or None when the prolog does not write one.
        node: Slurm node name, for ``slurm_<node>`` / ``<node>_slurmstepd.scope`` layouts.
    """

    def __init__(
        self,
        procfs_root: str | Path = "/proc",
        cgroup_root: str | Path = "/sys/fs/cgroup",
        gpu_map_dir: str | Path | None = None,
        node: str | None = None,
    ) -> None:
        self.procfs_root = Path(procfs_root)
        self.cgroup_root = Path(cgroup_root)
        self.gpu_map_dir = Path(gpu_map_dir) if gpu_map_dir is not None else None
        self.node = node
        self._job_gpus: dict[str, frozenset[int]] = {}
        self._pid_jobs: dict[int, str | None] = {}

    def _v1_job_dirs(self, controller: str, job_id: str) -> list[Path]:
        parents = [f"slurm_{self.node}", "slurm"] if self.node else ["slurm"]
        found: list[Path] = []
        for parent in parents:
            base = self.cgroup_root / controller / parent
            if base.is_dir():
                found.extend(base.glob(f"uid_*/job_{job_id}"))
        return found

    def _job_dirs(self, job_id: str) -> list[Path]:
        """Return the job's cgroup folders that exist (v2 scope first, then v1 controllers)."""
        scopes = (
            [f"{self.node}_slurmstepd.scope", "slurmstepd.scope"]
            if self.node
            else ["slurmstepd.scope"]
        )
        found = [
            d
            for scope in scopes
            if (d := self.cgroup_root / "system.slice" / scope / f"job_{job_id}").is_dir()
        ]
        for controller in _V1_CONTROLLERS:
            found.extend(self._v1_job_dirs(controller, job_id))
        return found

    def _one_pid(self, job_dir: Path) -> int | None:
        """Return the first pid found in a ``cgroup.procs`` under ``job_dir``."""
        for dirpath, _dirs, files in os.walk(job_dir):
            if "cgroup.procs" in files:
                try:
                    first = Path(dirpath, "cgroup.procs").read_text().split(maxsplit=1)
                except OSError:
                    continue
                if first and first[0].isdigit():
                    return int(first[0])
        return None

    def _from_cgroups(self, job_id: str) -> frozenset[int] | None:
        dirs = self._job_dirs(job_id)
        for job_dir in dirs:
            pid = self._one_pid(job_dir)
            if pid is None:
                continue
            try:
                gpus = gpus_from_environ((self.procfs_root / str(pid) / "environ").read_bytes())
            except OSError as err:
                logger.debug("cannot read environ job_id=%s pid=%s error=%s", job_id, pid, err)
                continue
            if gpus is not None:
                return gpus
            break  # one process is enough: the job has no GPU variables
        for job_dir in self._v1_job_dirs("devices", job_id):
            try:
                return parse_devices_list((job_dir / "devices.list").read_text())
            except OSError:
                continue
        return None

    def resolve(
        self,
        job_ids: Iterable[str],
        job_map: Mapping[str, JobMapEntry] | None = None,
        now_ns: int | None = None,
    ) -> dict[int, frozenset[str]]:
        """Return GPU minor → ids of the jobs holding it now.

        Args:
            job_ids: Jobs with a cgroup on this node now (the agent's cgroup scan).
            job_map: The hooks' job map read for this sample (None: read it here).
            now_ns: Now, epoch ns: a job the epilog marked ended by then holds nothing.
        """
        if job_map is None:
            job_map = read_job_map(self.gpu_map_dir)
        now_ns = time.time_ns() if now_ns is None else now_ns
        by_job = {j: e.gpus for j, e in job_map.items() if not e.ended_by(now_ns)}
        ended = {j for j, e in job_map.items() if e.ended_by(now_ns)}
        live = set(job_ids)
        for stale in self._job_gpus.keys() - live:
            del self._job_gpus[stale]
        for job_id in live - by_job.keys() - ended:
            if job_id not in self._job_gpus:
                gpus = self._from_cgroups(job_id)
                if gpus is None:
                    continue  # not cached: the job's first process may not have started yet
                self._job_gpus[job_id] = gpus
            by_job[job_id] = self._job_gpus[job_id]
        holders: dict[int, set[str]] = {}
        for job_id, minors in by_job.items():
            for minor in minors:
                holders.setdefault(minor, set()).add(job_id)
        return {minor: frozenset(jobs) for minor, jobs in holders.items()}

    def jobs_of_pids(self, pids: Iterable[int]) -> dict[int, str | None]:
        """Return pid → Slurm job id (None: not in a job, or gone) from ``/proc/<pid>/cgroup``.

        Results are cached for the pids asked about last time only, so a reused pid is
        re-read once it left a GPU's process list.
        """
        wanted = set(pids)
        cache = {pid: job for pid, job in self._pid_jobs.items() if pid in wanted}
        lines = hierarchy_count(self.procfs_root) if wanted - cache.keys() else None
        for pid in wanted - cache.keys():
            try:
                # Bytes decoded leniently: a cgroup folder named with non-UTF-8 bytes (a user's
                # delegated subtree) must not stop the GPU accounting of the whole node.
                text = read_text(os.path.join(self.procfs_root, str(int(pid)), "cgroup"))
            except OSError:
                cache[pid] = None
                continue
            cache[pid] = job_id_from_proc_cgroup(text, lines)
        self._pid_jobs = cache
        return dict(cache)
