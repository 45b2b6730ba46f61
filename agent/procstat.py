"""Node-wide CPU time and boot id from procfs (proc(5)).

* ``<procfs_root>/stat``: the first ``cpu`` line holds the time all CPUs spent in each state
  since boot, in ``USER_HZ`` ticks (``sysconf(_SC_CLK_TCK)``, 100 on every Linux
  architecture in practice): ``user nice system idle iowait irq softirq steal guest
  guest_nice``. ``guest`` and ``guest_nice`` are already included in ``user`` and ``nice``
  (kernel/sched/cputime.c), so adding them would count guest time twice. Fields after
  ``idle`` appeared in later kernels and are 0 when absent.
* ``<procfs_root>/sys/kernel/random/boot_id``: a random UUID made at each boot
  (Documentation/admin-guide/sysctl/kernel.rst, "random"); a new value means the node
  rebooted and every cumulative counter restarted.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from jobenergy.agent.readings import CpuTimes
from jobenergy.core.errors import SensorError

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal
_IDLE_FIELDS = (3, 4)  # idle iowait
_MIN_FIELDS = 4  # user nice system idle: present on every kernel
# The line loop below costs ~0.35 µs per ``cpuN`` line, every sample (50-100 µs on a 128-256
# CPU node): ASCII text with only "\n" line breaks (the kernel's) is scanned by these instead,
# which find the same lines that ``splitlines`` and the loop would.
_ODD_BREAKS = "\r\v\f\x1c\x1d\x1e"  # splitlines' other ASCII breaks (one find each: fast)
# Over "\n" + text, each line is "\n" + line: a literal prefix, which re finds fast.
_AGGREGATE = re.compile(r"\ncpu(?: ([^\n]*))?(?![^\n])")  # head "cpu": the line's rest
_PER_CPU = re.compile(r"\ncpu[0-9]+(?![^ \n])")  # head "cpu<N>"


def parse_cpu_times(text: str, ticks_per_s: int) -> CpuTimes:
    """Parse the content of ``/proc/stat`` into node-wide CPU times.

    Ticks are summed first and converted once, with integer arithmetic: exact whenever
    ``ticks_per_s`` divides 10⁹ (USER_HZ = 100 does), otherwise rounded down.

    Args:
        text: Content of ``/proc/stat``.
        ticks_per_s: ``USER_HZ``, clock ticks per second.

    Returns:
        Busy and total CPU time since boot, ns, and the number of ``cpuN`` lines.

    Raises:
        ValueError: If there is no aggregate ``cpu`` line or its fields are not integers.
    """
    if ticks_per_s <= 0:
        raise ValueError(f"ticks_per_s must be > 0, got {ticks_per_s}")
    if text.isascii() and not any(c in text for c in _ODD_BREAKS):
        return _cpu_times(*_scan(text), ticks_per_s)
    fields: list[int] | None = None
    ncpus = 0
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        head, _, rest = line.partition(" ")
        if head == "cpu":
            if fields is None:
                try:
                    fields = [int(v) for v in rest.split()]
                except ValueError as err:
                    raise ValueError(f"non-integer field in cpu line {line[:80]!r}") from err
        elif head[3:].isdigit():
            ncpus += 1
    return _cpu_times(fields, ncpus, ticks_per_s)


def _scan(text: str) -> tuple[list[int] | None, int]:
    """Return the aggregate line's fields and the ``cpuN`` line count (text split at "\\n")."""
    text = "\n" + text
    m = _AGGREGATE.search(text)
    fields = None
    if m is not None:
        try:
            fields = [int(v) for v in (m[1] or "").split()]
        except ValueError as err:
            raise ValueError(f"non-integer field in cpu line {m[0][1:81]!r}") from err
    return fields, len(_PER_CPU.findall(text))


def _cpu_times(fields: list[int] | None, ncpus: int, ticks_per_s: int) -> CpuTimes:
    if fields is None:
        raise ValueError("no aggregate 'cpu ' line")
    if len(fields) < _MIN_FIELDS or any(v < 0 for v in fields):
        raise ValueError(f"expected >= {_MIN_FIELDS} non-negative fields in cpu line, got {fields}")
    fields += [0] * (10 - len(fields))
    busy_ticks = sum(fields[i] for i in _BUSY_FIELDS)
    total_ticks = busy_ticks + sum(fields[i] for i in _IDLE_FIELDS)
    return CpuTimes(
        busy_ns=busy_ticks * NS_PER_S // ticks_per_s,
        total_ns=total_ticks * NS_PER_S // ticks_per_s,
        ncpus=ncpus,
    )


def _read_all(path: str) -> bytes:
    """Read a whole file with plain system calls (no buffered text layer: once a second)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65_536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_cpu_times(procfs_root: str | Path, ticks_per_s: int | None = None) -> CpuTimes:
    """Read node-wide busy and total CPU time from ``<procfs_root>/stat``.

    Args:
        procfs_root: Mount point of procfs, normally ``/proc``.
        ticks_per_s: ``USER_HZ``; defaults to ``os.sysconf("SC_CLK_TCK")`` of this host.

    Returns:
        CPU time since boot, ns (see :class:`CpuTimes`).

    Raises:
        SensorError: The file cannot be read or parsed.
    """
    if ticks_per_s is None:
        ticks_per_s = os.sysconf("SC_CLK_TCK")
    path = os.path.join(os.fspath(procfs_root), "stat")
    try:
        text = _read_all(path).decode("ascii", "replace")
    except OSError as err:
        raise SensorError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        return parse_cpu_times(text, ticks_per_s)
    except ValueError as err:
        raise SensorError(f"cannot parse {path}: {err}") from err


def read_boot_id(procfs_root: str | Path) -> str:
    """Read this boot's random id from ``<procfs_root>/sys/kernel/random/boot_id``.

    Args:
        procfs_root: Mount point of procfs, normally ``/proc``.

    Returns:
        The boot id, e.g. "3a1f6c2e-...", without the trailing newline.

    Raises:
        SensorError: The file cannot be read, or is empty or not a single token of at most
            64 characters (the wire schema's limit).
    """
    path = os.path.join(os.fspath(procfs_root), "sys", "kernel", "random", "boot_id")
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            boot_id = f.read().strip()
    except OSError as err:
        raise SensorError(f"cannot read {path}: {err.strerror or err}") from err
    if not boot_id or len(boot_id) > 64 or any(c.isspace() for c in boot_id):
        raise SensorError(f"{path} does not hold a boot id: {boot_id[:80]!r}")
    return boot_id
