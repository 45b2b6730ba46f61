"""Slurm job cgroups: which jobs run on this node, their CPU time and allocated CPUs.

Slurm's task/cgroup plugin puts every job in its own cgroup (Slurm's cgroup.conf(5) and
cgroup_v2 documentation; the kernel's Documentation/admin-guide/cgroup-v1/cpuacct.rst,
cgroup-v1/cpusets.rst and cgroup-v2.rst):

* cgroup v1, one mount per controller under ``cgroup_root`` (normally ``/sys/fs/cgroup``)::

      cpuacct/slurm[_<node>]/uid_<U>/job_<J>/step_<S>/task_<T>   cpuacct.usage (ns)
      cpuset/slurm[_<node>]/uid_<U>/job_<J>                       cpuset.cpus

  Debian's packages name the top folder ``slurm_<nodename>``; a host running several slurmd
  (multiple-slurmd, front ends, tests) has one such folder per slurmd.
* cgroup v2, one unified hierarchy::

      system.slice/[<node>_]slurmstepd.scope/job_<J>/step_<S>/user/task_<T>
      cpu.stat usage_usec (µs), cpuset.cpus.effective

  The scope also holds ``system`` (slurmstepd itself), whose CPU time is no job's.

Job folders are ``job_<digits>`` or, from Slurm 26.05, ``job_s`` followed by a 13-character
lowercase SLUID. Anything else is ignored (debug log) rather than parsed into a wrong id.
A folder removed by slurmd while it is being read (the job ended) is skipped for that sample.

Each job's step folders (``step_<S>``: ``batch``, ``extern``, ``0``, ...) are listed every
``STEPS_EVERY`` snapshots; the CPU time of every listed step (the same files as the job's) is
read at each snapshot. A step folder gone meanwhile (the step ended) is skipped and the job's
steps are listed again at the next snapshot; a step started since the last listing is seen
at the next one (its whole usage then counts, as for a new job).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from jobenergy.agent.cgroupfs import (
    JOB_RE,
    LIVE_FILESYSTEMS,
    SCOPE,
    UID_RE,
    KeptFiles,
    Reader,
    Vanished,
    cpus_v1,
    cpus_v2,
    list_dirs,
    list_names,
    list_steps,
    mount_type,
    read_bytes,
    usage_v1,
    usage_v2,
)
from jobenergy.agent.readings import CgroupSnapshot, JobCgroup
from jobenergy.core.errors import ConfigError, SensorError
from jobenergy.core.limits import MAX_UID
from jobenergy.core.text import printable

logger = logging.getLogger(__name__)

#: Re-list a job's step folders every this many snapshots.
STEPS_EVERY = 10
_UNSEEN = object()  # a job folder not in the birth cache (None there: birth unknown)


class SlurmCgroups:
    """Resolve the Slurm job cgroups of this node (cgroup v1 or v2).

    Args:
        cgroup_root: Mount point of the cgroup filesystems, normally ``/sys/fs/cgroup``.
        node: This slurmd's node name, needed only when several slurmd run on the host
            (``slurm_<node>`` / ``<node>_slurmstepd.scope``); the plain names are the fallback.
        version: Force cgroup version 1 or 2 (hybrid hosts); detected when None: v2 if
            ``<root>/cgroup.controllers`` exists or ``<root>/cpuacct`` does not.
        keep_open: Keep the jobs' CPU-time files open between snapshots
            (:class:`~jobenergy.agent.cgroupfs.KeptFiles`); when None, only where the Slurm
            root is on the kernel's cgroupfs, whose files show the value now at every read.

    Raises:
        ConfigError: ``version`` is not 1, 2 or None.
    """

    def __init__(
        self, cgroup_root: str | Path, node: str | None = None, *, version: int | None = None,
        keep_open: bool | None = None,
    ) -> None:
        self._root = os.fspath(cgroup_root)
        self._keep_open = keep_open
        self._files: KeptFiles | None = None
        self._read: Reader = read_bytes  # KeptFiles.read once the root is known to allow it
        self._node = node
        if version is None:
            unified = os.path.exists(os.path.join(self._root, "cgroup.controllers"))
            version = 2 if unified or not self._v1_cpuacct_base() else 1
        if version not in (1, 2):
            raise ConfigError(f"cgroup version must be 1 or 2, got {version!r}")
        self.version: int = version
        self._slurm_dir: str | None = None  # resolved root, cached until it disappears
        # Job folder → its cpuset, once two samples agreed (see _cached_cpus).
        self._cpus_stable: dict[str, frozenset[int]] = {}
        self._cpus_last: dict[str, frozenset[int]] = {}
        # Job folder → (snapshot number, steps): steps are metadata, listed every
        # STEPS_EVERY snapshots instead of every second (listing was half the resolver's cost).
        self._steps_seen: dict[str, tuple[int, tuple[str, ...]]] = {}
        # Job folder → its ctime (the job's birth), read once when first seen.
        self._born: dict[str, int | None] = {}
        self._seen_paths: dict[str, str] = {}  # job id → its folder at the last snapshot
        self._snapshots = 0

    def snapshot(self) -> CgroupSnapshot:
        """Return every Slurm job cgroup on this node now.

        Returns:
            The snapshot; empty with ``root_usage_ns`` None when no Slurm root cgroup exists
            (no job has started since boot).

        Raises:
            ConfigError: Several ``slurm_<node>`` / ``<node>_slurmstepd.scope`` folders
                exist and no ``node`` was given.
            SensorError: A cgroup file exists but cannot be read or holds garbage.
        """
        self._snapshots += 1
        try:
            for _ in range(2):
                slurm_dir = self._resolve()
                if slurm_dir is None:
                    logger.debug("no Slurm cgroup root under cgroup_root=%s", self._root)
                    return CgroupSnapshot(version=self.version)
                try:
                    if self.version == 1:
                        return self._snapshot_v1(slurm_dir)
                    return self._snapshot_v2(slurm_dir)
                except Vanished:
                    self._slurm_dir = None  # the root itself went away: resolve once more
            return CgroupSnapshot(version=self.version)
        finally:
            if self._files is not None:
                self._files.sweep()  # ended jobs' and steps' files, and any not read now

    def close(self) -> None:
        """Close the files kept open (:class:`~jobenergy.agent.cgroupfs.KeptFiles`)."""
        if self._files is not None:
            self._files.close()

    # -- layout ---------------------------------------------------------------------------

    def _v1_cpuacct_base(self) -> str | None:
        """Return the v1 cpuacct mount (``cpuacct`` or the joint ``cpu,cpuacct``)."""
        for name in ("cpuacct", "cpu,cpuacct"):
            path = os.path.join(self._root, name)
            if os.path.isdir(path):
                return path
        return None

    def _resolve(self) -> str | None:
        """Return the Slurm root cgroup folder (v1 under cpuacct, v2 the scope), or None."""
        if self._slurm_dir is not None:
            return self._slurm_dir
        if self.version == 1:
            parent = self._v1_cpuacct_base()
            plain, per_node = "slurm", f"slurm_{self._node}"

            def is_candidate(name: str) -> bool:
                return name == plain or name.startswith("slurm_")
        else:
            parent = os.path.join(self._root, "system.slice")
            plain, per_node = SCOPE, f"{self._node}_{SCOPE}"

            def is_candidate(name: str) -> bool:
                return name == plain or name.endswith("_" + SCOPE)

        if parent is None:
            return None
        if self._node is not None:
            chosen = next(
                (n for n in (per_node, plain) if os.path.isdir(os.path.join(parent, n))), None
            )
        else:
            try:
                with os.scandir(parent) as it:
                    found = sorted(e.name for e in it if is_candidate(e.name) and e.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                found = []
            except OSError as err:
                raise SensorError(f"cannot list {parent}: {err.strerror or err}") from err
            if len(found) > 1:
                names = printable(", ".join(found))
                raise ConfigError(
                    f"several Slurm cgroup roots in {parent}: {names}; set the agent's node "
                    "name so the right one is used"
                )
            chosen = found[0] if found else None
        if chosen is None:
            return None
        self._slurm_dir = os.path.join(parent, chosen)
        keep = self._keep_open
        if keep is None:
            keep = mount_type(self._slurm_dir) in LIVE_FILESYSTEMS
        if keep and self._files is None:
            self._files = KeptFiles()
        elif not keep and self._files is not None:
            self._files.close()
            self._files = None
        self._read = self._files.read if self._files is not None else read_bytes
        logger.debug(
            "Slurm cgroup root version=%s path=%s", self.version, printable(self._slurm_dir)
        )
        return self._slurm_dir

    # -- v1 -------------------------------------------------------------------------------

    def _snapshot_v1(self, slurm_dir: str) -> CgroupSnapshot:
        """Read ``cpuacct/slurm[_<node>]/uid_U/job_J`` and the matching cpuset folders."""
        root_usage_ns = usage_v1(slurm_dir, self._read)
        cpuset_dir = os.path.join(self._root, "cpuset", os.path.basename(slurm_dir))
        jobs: dict[str, JobCgroup] = {}
        stable_cpus = self._cpus_stable
        born = self._born
        for uid_name in list_names(slurm_dir):
            uid_m = UID_RE.match(uid_name)
            if uid_m is None:
                continue  # the root's own files (cpuacct.usage, tasks, ...)
            uid_path = f"{slurm_dir}/{uid_name}"
            try:
                job_names = list_names(uid_path)
            except Vanished:
                continue
            uid_value = int(uid_m[1])
            uid = uid_value if uid_value <= MAX_UID else None
            for job_name in job_names:
                if not job_name.startswith("job_"):
                    continue
                m = JOB_RE.match(job_name)
                job_path = f"{uid_path}/{job_name}"
                if m is None:
                    logger.debug("ignoring non-job cgroup folder path=%s", printable(job_path))
                    continue
                try:
                    usage_ns = usage_v1(job_path, self._read)
                    steps = self._cached_steps(job_path)
                except Vanished:
                    logger.debug("job cgroup vanished while read job_id=%s", m[1])
                    continue
                cpus = stable_cpus.get(job_path)
                if cpus is None:
                    cpus = self._cached_cpus(
                        job_path, f"{cpuset_dir}/{uid_name}/{job_name}/cpuset.cpus", cpus_v1
                    )
                step_usage = self._step_usage(job_path, steps, usage_v1)
                born_ns = born.get(job_path, _UNSEEN)  # a method call per job only when new
                if born_ns is _UNSEEN:
                    born_ns = self._born_ns(job_path, steps)
                jobs[m[1]] = JobCgroup(m[1], uid, usage_ns, cpus, steps, job_path, step_usage,
                                       born_ns)
        ended_ns = self._forget_ended(jobs, slurm_dir)
        return CgroupSnapshot(
            version=1, jobs=jobs, root_usage_ns=root_usage_ns, ended_ns=ended_ns
        )

    # -- cpusets -------------------------------------------------------------------------

    def _cached_cpus(
        self, job_path: str, arg: str, read: Callable[[str], frozenset[int]]
    ) -> frozenset[int]:
        """Return a job's CPUs, reading them until two samples agree, then from the cache.

        A job's cpuset does not change while it runs, but a cgroup just made by slurmstepd
        can show the parent's (v2 ``cpuset.cpus.effective``) or no CPUs (v1) until Slurm has
        written it; requiring two equal non-empty reads a sample apart skips that window.
        Saves one file read per job per sample.
        """
        cpus = self._cpus_stable.get(job_path)
        if cpus is not None:
            return cpus
        cpus = read(arg)
        if cpus and self._cpus_last.get(job_path) == cpus:
            self._cpus_stable[job_path] = cpus
        self._cpus_last[job_path] = cpus
        return cpus

    def _cached_steps(self, job_path: str) -> tuple[str, ...]:
        seen = self._steps_seen.get(job_path)
        if seen is not None and self._snapshots - seen[0] < STEPS_EVERY:
            return seen[1]
        steps = list_steps(job_path)
        self._steps_seen[job_path] = (self._snapshots, steps)
        return steps

    def _step_usage(
        self, job_path: str, steps: tuple[str, ...], usage_of: Callable[[str, Reader], int]
    ) -> dict[str, int]:
        """Return the CPU time of each listed step of a job, ns; a vanished step is skipped."""
        usage: dict[str, int] = {}
        read = self._read
        for step in steps:
            try:
                usage[step] = usage_of(f"{job_path}/step_{step}", read)
            except Vanished:
                self._steps_seen.pop(job_path, None)  # list the job's steps again next time
        return usage

    def _born_ns(self, job_path: str, steps: tuple[str, ...]) -> int | None:
        """Return when a job's cgroup was made, epoch ns, read once per folder.

        cgroupfs sets a folder's ctime at mkdir, and later changes inside it (a step folder
        made, tasks attached) move it on; the job's first step (``extern`` with
        ``PrologFlags=Contain``) is made with it. So the birth is the earliest ctime of the
        job folder and its step folders, read when the agent first sees the job (DESIGN.md
        decision 16: its first interval charges it only from then on).
        """
        try:
            return self._born[job_path]
        except KeyError:
            pass
        times = []
        for path in (job_path, *(f"{job_path}/step_{step}" for step in steps)):
            try:
                times.append(os.stat(path).st_ctime_ns)
            except OSError:
                continue
        born = self._born[job_path] = min(times) if times else None
        return born

    def _forget_ended(self, jobs: dict[str, JobCgroup], slurm_dir: str) -> dict[str, int]:
        """Drop the caches of job folders that are gone; return when each vanished, epoch ns.

        Removing a folder sets its parent's ctime (``uid_<U>`` in v1, the scope in v2; the
        Slurm root when slurmd removed the emptied ``uid_<U>`` too), so that ctime, read at the
        first sample after, is the job's end unless the parent changed again since (another
        job made or removed there): never earlier than the end, at worst this sample's time.
        """
        seen = self._seen_paths
        if len(seen) == len(jobs) and all(seen.get(j) == cg.path for j, cg in jobs.items()):
            return {}  # the same folders as before: nothing ended, nothing to forget
        live = {job.path for job in jobs.values()}
        ended_ns: dict[str, int] = {}
        for job_id, path in self._seen_paths.items():
            if job_id in jobs:
                continue
            for parent in (os.path.dirname(path), slurm_dir):
                try:
                    ended_ns[job_id] = os.stat(parent).st_ctime_ns
                    break
                except OSError:
                    continue
        self._seen_paths = {j: cg.path for j, cg in jobs.items()}
        if self._born.keys() - live:
            self._born = {p: b for p, b in self._born.items() if p in live}
        if self._steps_seen.keys() - live:
            self._steps_seen = {p: s for p, s in self._steps_seen.items() if p in live}
        if self._cpus_last.keys() - live:
            self._cpus_last = {p: c for p, c in self._cpus_last.items() if p in live}
            self._cpus_stable = {p: c for p, c in self._cpus_stable.items() if p in live}
        return ended_ns

    # -- v2 -------------------------------------------------------------------------------

    def _snapshot_v2(self, scope: str) -> CgroupSnapshot:
        """Read ``system.slice/[<node>_]slurmstepd.scope/job_J`` and the scope's other children."""
        root_usage_ns = usage_v2(scope, self._read)
        jobs: dict[str, JobCgroup] = {}
        other_usage_ns = 0
        for name in list_dirs(scope):
            path = f"{scope}/{name}"
            m = JOB_RE.match(name)
            if m is None:
                if name.startswith("job_"):
                    logger.debug("ignoring non-job cgroup folder path=%s", printable(path))
                try:
                    other_usage_ns += usage_v2(path, self._read)  # slurmstepd's: no job's
                except Vanished:
                    pass
                continue
            try:
                usage_ns = usage_v2(path, self._read)
                steps = self._cached_steps(path)
            except Vanished:
                logger.debug("job cgroup vanished while read job_id=%s", m[1])
                continue
            jobs[m[1]] = JobCgroup(
                job_id=m[1],
                uid=None,
                cpu_usage_ns=usage_ns,
                cpus=self._cached_cpus(path, path, cpus_v2),
                steps=steps,
                path=path,
                step_usage_ns=self._step_usage(path, steps, usage_v2),
                born_ns=self._born_ns(path, steps),
            )
        ended_ns = self._forget_ended(jobs, scope)
        return CgroupSnapshot(
            ended_ns=ended_ns,
            version=2, jobs=jobs, root_usage_ns=root_usage_ns, other_usage_ns=other_usage_ns
        )
