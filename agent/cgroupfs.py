"""Reading and parsing cgroupfs and /proc files for the Slurm cgroup resolver.

Parsing (text → value) is kept apart from reading, and reading translates the kernel's errors:
a folder or file that vanished (a job ended while it was read) raises :class:`Vanished`, which
callers skip for one sample; anything else is a :class:`SensorError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from jobenergy.core.errors import SensorError
from jobenergy.core.text import printable

logger = logging.getLogger(__name__)

T = TypeVar("T")

JOB_RE = re.compile(r"^job_([0-9]+|s[0-9a-z]{13})\Z")
UID_RE = re.compile(r"^uid_([0-9]{1,10})\Z")
_SLURM_V1_RE = re.compile(r"^slurm(?:_.+)?\Z")
SCOPE = "slurmstepd.scope"
_NS_PER_US = 1_000
_READ_SIZE = 65_536
# A cgroup removed by slurmd between listing and reading: gone, not failed.
VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ENOTDIR, errno.ESRCH})


class Vanished(Exception):
    """The cgroup folder being read was removed (internal: the job is skipped)."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse a kernel CPU list such as ``0-3,8,10-11`` (cpusets.rst "cpuset.cpus").

    Args:
        text: Content of ``cpuset.cpus`` or ``cpuset.cpus.effective``; empty means no CPU.

    Returns:
        The CPU ids.

    Raises:
        ValueError: If the text is not a CPU list.
    """
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return frozenset()
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text[:80]!r}")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ValueError(f"descending CPU range {part!r} in {text[:80]!r}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def parse_usage_usec(text: str) -> int:
    """Return ``usage_usec`` (cumulative CPU time, µs) from a cgroup v2 ``cpu.stat``.

    Raises:
        ValueError: If there is no ``usage_usec`` line with a non-negative integer.
    """
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            value = value.strip()
            if not value.isdigit():
                raise ValueError(f"usage_usec is not a non-negative integer: {value[:40]!r}")
            return int(value)
    raise ValueError("no usage_usec line")


def parse_ns(text: str) -> int:
    """Parse v1 ``cpuacct.usage`` (cumulative CPU time, ns)."""
    value = text.strip()
    if not value.isdigit():
        raise ValueError(f"expected a non-negative integer, got {value[:40]!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class ProcJob:
    """The Slurm job a process belongs to, from its ``/proc/<pid>/cgroup``.

    Attributes:
        job_id: The job id as in the folder name ("42" or a SLUID).
        uid: The job's owner when the path says it (v1 ``uid_<U>``), else None.
        path: The process's cgroup path (v2: the job's owner is the owner of its step's
            ``user`` folder, which slurmstepd delegates to the user).
    """

    job_id: str
    uid: int | None
    path: str


def _job_under_slurm_root(path: str) -> ProcJob | None:
    """Return the job of one cgroup path when its job folder sits right under Slurm's root.

    Only the first levels count (v1 ``/slurm[_<node>]/uid_<U>/job_<J>``, v2
    ``/system.slice/[<node>_]slurmstepd.scope/job_<J>``): a ``job_<N>`` deeper down, such as
    in a cgroup subtree slurmstepd delegated to the user (``.../step_0/user/...``) or under
    ``user@<uid>.service`` (which systemd delegates to every user), is whatever the user
    named it, not job N.
    """
    comps = path.split("/")
    if len(comps) < 4 or comps[0] != "":
        return None
    top, middle, job = comps[1], comps[2], JOB_RE.match(comps[3])
    if job is None:
        return None
    if top == "system.slice" and (middle == SCOPE or middle.endswith("_" + SCOPE)):
        return ProcJob(job[1], None, path)
    uid = UID_RE.match(middle)
    if uid is not None and _SLURM_V1_RE.match(top):
        return ProcJob(job[1], int(uid[1]), path)
    return None


def job_of_proc_cgroup(text: str, lines: int | None = None) -> ProcJob | None:
    """Return the Slurm job in the content of ``/proc/<pid>/cgroup``, or None.

    Every line (``hierarchy-ID:controllers:path``, cgroups(7)) is examined, so any v1
    controller line (``4:cpuacct,cpu:/slurm/uid_1000/job_42/step_0/task_0``, or
    ``/slurm_<node>/...``) or the v2 line
    (``0::/system.slice/[<node>_]slurmstepd.scope/job_42/step_0/user/task_0``) will do.
    Lines naming different jobs make the answer None: a process is in one job or none.

    The kernel prints cgroup names as they are, and a user may name a folder of a subtree
    delegated to them with a newline followed by a forged line: only ``\\n`` ends a line
    (never the other separators ``str.splitlines`` knows), and when ``lines`` (the number of
    cgroup hierarchies: every process has one line per hierarchy) is given, a file with
    more lines is no job's.

    Args:
        text: Content of ``/proc/<pid>/cgroup``.
        lines: How many lines the file must have, e.g. from :func:`hierarchy_count`.

    Returns:
        The job, None if the process is in no Slurm job cgroup (slurmstepd's own ``system``
        cgroup, a login session, a folder merely called ``job_<N>``, ...).
    """
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    if lines is not None and len(rows) != lines:
        return None
    found: ProcJob | None = None
    for row in rows:
        parts = row.split(":", 2)
        if len(parts) != 3:
            continue
        job = _job_under_slurm_root(parts[2])
        if job is None:
            continue
        if found is not None and found.job_id != job.job_id:
            return None
        if found is None or (found.uid is None and job.uid is not None):
            found = job
    return found


def hierarchy_count(procfs_root: str | Path) -> int | None:
    """Return how many lines this process's own ``/proc/self/cgroup`` has (the number of
    cgroup hierarchies, the same for every process), or None when it cannot be read (a
    simulated procfs)."""
    try:
        text = read_text(os.path.join(os.fspath(procfs_root), "self", "cgroup"))
    except OSError:
        return None
    return len(text.rstrip("\n").split("\n")) if text else None


def job_id_from_proc_cgroup(text: str, lines: int | None = None) -> str | None:
    """Return the Slurm job id in the content of ``/proc/<pid>/cgroup`` (see
    :func:`job_of_proc_cgroup`), or None."""
    job = job_of_proc_cgroup(text, lines)
    return None if job is None else job.job_id


def job_of_pid(procfs_root: str | Path, pid: int) -> ProcJob | None:
    """Return the Slurm job of a process from ``<procfs_root>/<pid>/cgroup``, or None.

    Args:
        procfs_root: Mount point of procfs, normally ``/proc``.
        pid: Process id.

    Returns:
        The job, or None if the process is in no Slurm job or has exited.

    Raises:
        SensorError: The file exists but cannot be read.
    """
    path = os.path.join(os.fspath(procfs_root), str(int(pid)), "cgroup")
    try:
        text = read_text(path)
    except OSError as err:
        if err.errno in VANISHED_ERRNOS:
            return None
        raise SensorError(f"cannot read {printable(path)}: {err.strerror or err}") from err
    return job_of_proc_cgroup(text, hierarchy_count(procfs_root))


def job_id_from_pid(procfs_root: str | Path, pid: int) -> str | None:
    """Return the Slurm job id of a process (see :func:`job_of_pid`), or None."""
    job = job_of_pid(procfs_root, pid)
    return None if job is None else job.job_id


def job_owner_uid(cgroup_root: str | Path, job: ProcJob) -> int | None:
    """Return the uid that owns ``job``, or None when its cgroups do not say.

    cgroup v1 names it (``uid_<U>``). In v2 the job folder is root's, but slurmstepd makes
    each step's ``user`` folder (where the tasks run) owned by the job's user, so a process
    there gets the owner of that folder; one elsewhere in the job (slurmstepd's own
    ``slurm`` folder) gets None.
    """
    if job.uid is not None:
        return job.uid
    comps = job.path.split("/")
    if len(comps) < 6 or comps[5] != "user" or not comps[4].startswith("step_"):
        return None
    rel = "/".join(comps[1:6])
    for base in (os.fspath(cgroup_root), os.path.join(os.fspath(cgroup_root), "unified")):
        try:
            return os.stat(os.path.join(base, rel)).st_uid
        except OSError:
            continue
    return None


def read_bytes(path: str) -> bytes:
    """Read a small cgroup/proc file; one ``read`` call suffices below 64 KiB."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:
            chunks = [data]
            while chunk := os.read(fd, _READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data


#: What a read of a cgroup file is: a path in, the file's bytes out.
Reader = Callable[[str], bytes]


def mount_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Return the type of the filesystem that serves ``path``: the mount whose device
    (``major:minor``) is the path's own, so a filesystem mounted over another is the one
    seen; None when the path or ``mountinfo`` cannot be read."""
    try:
        dev = os.stat(path).st_dev
        with open(mountinfo, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return None
    wanted = f"{os.major(dev)}:{os.minor(dev)}".encode()
    for line in lines:
        # "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw" (proc(5))
        fields, sep, rest = line.partition(b" - ")
        parts = fields.split(b" ")
        if sep and len(parts) >= 5 and parts[2] == wanted:
            return rest.split(b" ", 1)[0].decode("ascii", "replace")
    return None


#: Filesystems whose files make their content when read: an open file read again at offset 0
#: shows the value now, and one whose cgroup was removed fails (ENODEV) rather than showing an
#: old value. Only there may a file be kept open between samples.
LIVE_FILESYSTEMS = frozenset({"cgroup", "cgroup2"})


class KeptFiles:
    """Cgroup files kept open between samples and read again with ``pread`` at offset 0.

    On the kernel's cgroupfs an open, read and close costs ~7.5 µs and a ``pread`` on a file
    kept open ~0.9 µs (measured on this project's machines, v1 and v2 alike), and the agent
    reads one file per job and step every second. A file whose cgroup was removed fails with
    ENODEV, even when a folder of the same name was made again (a requeued job): then the
    path is opened anew, so a read never returns another cgroup's value. At most ``limit``
    files are kept (the agent's open-file limit); beyond, files are read as
    :func:`read_bytes` does. :meth:`sweep`, once per snapshot, closes the files not read since
    the previous one: those of ended jobs and steps, and of folders no longer listed.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = 4096 if soft == resource.RLIM_INFINITY else max(0, min(4096, soft // 2))
        self.limit = limit
        self._fds: dict[str, int] = {}
        self._read_since_sweep: set[str] = set()

    def __len__(self) -> int:
        return len(self._fds)

    def read(self, path: str) -> bytes:
        """Return the file's bytes now (raises OSError as :func:`read_bytes`)."""
        fd = self._fds.get(path)
        if fd is not None:
            try:
                data = os.pread(fd, _READ_SIZE, 0)
            except OSError:
                data = None  # its cgroup was removed (ENODEV): the path is looked up again
            if data is not None and len(data) < _READ_SIZE:
                self._read_since_sweep.add(path)
                return data
            self._close(path)
        if len(self._fds) >= self.limit:
            return read_bytes(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, _READ_SIZE, 0)
        except BaseException:
            os.close(fd)
            raise
        if len(data) == _READ_SIZE:  # not a counter file: read whole, not kept
            os.close(fd)
            return read_bytes(path)
        self._fds[path] = fd
        self._read_since_sweep.add(path)
        return data

    def sweep(self) -> None:
        """Close the kept files not read since the previous sweep."""
        read, self._read_since_sweep = self._read_since_sweep, set()
        if len(read) != len(self._fds):
            for path in [p for p in self._fds if p not in read]:
                self._close(path)

    def close(self) -> None:
        """Close every kept file."""
        for path in list(self._fds):
            self._close(path)
        self._read_since_sweep.clear()

    def _close(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def read_text(path: str) -> str:
    """Read a small cgroup/proc file as text (ASCII; other bytes replaced)."""
    return read_bytes(path).decode("ascii", "replace")


def _read_failed(path: str, err: OSError) -> Exception:
    if err.errno in VANISHED_ERRNOS:
        return Vanished(path)
    return SensorError(f"cannot read {printable(path)}: {err.strerror or err}")


def _parsed(path: str, text: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(text)
    except ValueError as err:
        raise SensorError(f"garbage in {printable(path)}: {err}") from err


def read_parsed(path: str, parse: Callable[[str], T]) -> T:
    """Read and parse one file; vanished → Vanished, other failures → SensorError."""
    try:
        text = read_text(path)
    except OSError as err:
        raise _read_failed(path, err) from err
    return _parsed(path, text, parse)


def list_names(path: str) -> list[str]:
    """Return the entry names of a cgroup folder (sorted); vanished → Vanished.

    Names are enough below the Slurm root: cgroupfs files are never called ``uid_*``,
    ``job_*`` or ``step_*``, and ``listdir`` is several times cheaper than ``scandir``.
    """
    try:
        names = os.listdir(path)
    except OSError as err:
        if err.errno in VANISHED_ERRNOS:
            raise Vanished(path) from err
        raise SensorError(f"cannot list {printable(path)}: {err.strerror or err}") from err
    names.sort()
    return names


def list_dirs(path: str) -> list[str]:
    """Return the sub-folder names of a cgroup folder (sorted); vanished → Vanished."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError as err:
        if err.errno in VANISHED_ERRNOS:
            raise Vanished(path) from err
        raise SensorError(f"cannot list {printable(path)}: {err.strerror or err}") from err


#: Slurm's step folders: ``step_<N>``, ``step_<N>+<K>`` (het), batch, extern, interactive.
STEP_RE = re.compile(r"^step_([0-9]{1,10}(?:\+[0-9]{1,4})?|batch|extern|interactive)\Z")
#: Steps read per job: a job may make folders in a cgroup delegated to it (v2), and each one
#: read at every sample would cost the agent without bound.
MAX_STEPS = 64


def list_steps(job_path: str) -> tuple[str, ...]:
    """Return the step names ("0", "batch", "extern") of a job folder (at most MAX_STEPS)."""
    steps = [m[1] for n in list_names(job_path) if (m := STEP_RE.match(n))]
    return tuple(steps[:MAX_STEPS])


# The two below are read for every job and step at every sample: the usual content is parsed
# from the bytes, anything else by the text parsers (same values, same errors).

def usage_v1(path: str, read: Reader = read_bytes) -> int:
    """Return a v1 cpuacct cgroup's cumulative CPU time, ns (``cpuacct.usage``)."""
    file = path + "/cpuacct.usage"
    try:
        data = read(file)
    except OSError as err:
        raise _read_failed(file, err) from err
    value = data.strip()
    if value.isdigit():
        return int(value)
    return _parsed(file, data.decode("ascii", "replace"), parse_ns)


def usage_v2(path: str, read: Reader = read_bytes) -> int:
    """Return a v2 cgroup's cumulative CPU time, ns (``cpu.stat`` usage_usec × 1000)."""
    file = path + "/cpu.stat"
    try:
        data = read(file)
    except OSError as err:
        raise _read_failed(file, err) from err
    if data.startswith(b"usage_usec "):  # the first line, as the kernel writes it
        end = data.find(b"\n")
        value = data[11:end if end >= 0 else len(data)].strip()
        if value.isdigit():
            return int(value) * _NS_PER_US
    return _parsed(file, data.decode("ascii", "replace"), parse_usage_usec) * _NS_PER_US


def cpus_v1(cpuset_path: str) -> frozenset[int]:
    """Return a v1 job's CPUs from its ``cpuset.cpus``; none if the cpuset folder is absent."""
    try:
        return read_parsed(cpuset_path, parse_cpu_list)
    except Vanished:
        return frozenset()  # cpuset not constrained (ConstrainCores=no) or the job ended


def cpus_v2(path: str) -> frozenset[int]:
    """Return a v2 cgroup's CPUs (``cpuset.cpus.effective``, else ``cpuset.cpus``; else none)."""
    for name in ("cpuset.cpus.effective", "cpuset.cpus"):
        try:
            return read_parsed(f"{path}/{name}", parse_cpu_list)
        except Vanished:
            continue
    return frozenset()
