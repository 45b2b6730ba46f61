"""The Slurm hooks' job map: which jobs run on this node, their GPUs, start and end times.

The node prolog writes ``<gpu_map_dir>/<job_id>`` for every job (root-owned folder: jobs
cannot write it)::

    0,1                       the job's SLURM_JOB_GPUS (empty line for a CPU job)
    start=1796196766.600592   when the prolog ran, epoch seconds
    energy_limit_uj=9000000000  the job's --energy-limit, µJ (only jobs with one)
    nodes=2                     the job's node count, over which the limit is shared

and the epilog rewrites it with ``end=<epoch seconds>`` appended, then removes it a few
seconds later (longer than one sample interval, so the next sample still sees it). A file
of an older hook holds only the first line; its times are then unknown (None).

The map serves three readers, all from one scan per sample: GPU allocation (the first line),
jobs shorter than one sample interval that no cgroup scan saw (the names), and the job's
lifetime inside the boundary intervals it is charged for (``start``/``end``: DESIGN.md
decision 16, a job pays for the time it existed, not for whole sample intervals).

A file changes twice in a job's life, so :class:`JobMapReader` (the sampler's) reads a file
again only when its inode, size, mtime or ctime changed; one written within the filesystem's
timestamp granularity of the read (``_RACY_NS``: a rewrite then could keep all four) is read
again at the next scan. The hooks write every file by renaming a temporary one into place
(and remove it with ``rm``), so any change to the map changes the folder's own mtime: while
the folder's inode, mtime and ctime stay as they were at a scan whose files were all settled,
the scan is not repeated (one ``stat`` per sample instead of one per job). "Settled" for the
folder means older than ``_DIR_SETTLED_NS`` (2 s), not the files' 50 ms: the folder keeps its
inode, so on a filesystem that keeps whole seconds a second change within the same second
would otherwise leave its key as it was. The folder is the hooks' own (root, 0755 or
stricter): nobody else edits a file in place.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: A map file is named after the job id (the wire schema's JobId pattern).
JOB_NAME_RE = re.compile(r"[A-Za-z0-9_.+:\-]{1,64}")
#: Slurm job ids are digits (array tasks and het components have ids of their own): the only
#: names that reach scancel's argv (agent/energy_limits.py, agent/budget_actions.py).
SLURM_JOB_ID_RE = re.compile(r"[1-9][0-9]{0,9}")
_MAX_MAP_BYTES = 4096
#: A file changed this recently when it was read may change again with the same stat
#: (inode, size, mtime, ctime): timestamps are taken from a coarse clock (a jiffy, ≤ 10 ms).
_RACY_NS = 50_000_000
_DIR_SETTLED_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class JobMapEntry:
    """One job in the map.

    Attributes:
        gpus: GPU ids (minor numbers) Slurm gave the job on this node.
        start_ns: When the prolog ran, epoch ns; None if the hook did not say.
        end_ns: When the epilog ran (the job had ended), epoch ns; None while it runs.
        energy_limit_uj: The job's energy limit (all its nodes), µJ; None: no limit.
        nodes: The job's node count (the prolog's), None when the hook did not say.
    """

    gpus: frozenset[int] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None
    energy_limit_uj: int | None = None
    nodes: int | None = None

    def ended_by(self, wall_ns: int) -> bool:
        """True when the epilog said the job ended at or before ``wall_ns``."""
        return self.end_ns is not None and self.end_ns <= wall_ns


def parse_gpu_ids(text: str) -> frozenset[int]:
    """Parse ``0,1`` or ``0-3,6`` (whitespace ignored) into GPU ids; bad parts are skipped."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if lo.isdigit() and (not sep or hi.isdigit()) and len(lo) < 6 and len(hi) < 6:
            ids.update(range(int(lo), int(hi) + 1) if sep else (int(lo),))
    return frozenset(ids)


def _epoch_ns(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value <= 0 or value > 1e11:
        return None
    return int(value * 1e9)


def _count(text: str, most: int) -> int | None:
    """Return a positive integer of at most ``most``, or None for anything else."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value <= most else None


#: 1 GWh, the SPANK plugin's bound on --energy-limit.
MAX_ENERGY_LIMIT_UJ = 3_600_000_000_000_000_000


def parse_job_map(text: str) -> JobMapEntry:
    """Parse one map file: GPU ids on the first line, then ``key=value`` lines."""
    first, _, rest = text.partition("\n")
    times: dict[str, int | None] = {}
    counts: dict[str, int | None] = {}
    for line in rest.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("start", "end"):
            times[key] = _epoch_ns(value.strip())
        elif sep and key == "energy_limit_uj":
            counts[key] = _count(value.strip(), MAX_ENERGY_LIMIT_UJ)
        elif sep and key == "nodes":
            counts[key] = _count(value.strip(), 1_000_000)
    return JobMapEntry(parse_gpu_ids(first), times.get("start"), times.get("end"),
                       counts.get("energy_limit_uj"), counts.get("nodes"))


def _list_map(map_dir: str | Path, known: Container[str] = ()) -> list[os.DirEntry] | None:
    """Return the map's job files (None when the folder cannot be listed).

    Names in ``known`` passed the name checks before (they depend on the name only).
    """
    try:
        with os.scandir(map_dir) as it:
            return [
                e
                for e in it
                if (
                    e.name in known
                    or not e.name.startswith(".")  # a hook's temp file before its rename
                    and JOB_NAME_RE.fullmatch(e.name)
                )
                and e.is_file(follow_symlinks=False)
            ]
    except OSError as err:
        logger.debug("cannot list job map dir path=%s error=%s", map_dir, err)
        return None


def _read_entry(path: str) -> JobMapEntry | None:
    """Read one map file; None when it vanished (the epilog removed it meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _MAX_MAP_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_job_map(data.decode("ascii", "replace"))


def read_job_map(map_dir: str | Path | None) -> dict[str, JobMapEntry]:
    """Return every job in the map now (empty when the folder is absent or unset)."""
    if map_dir is None:
        return {}
    files = _list_map(map_dir)
    if files is None:
        return {}
    entries: dict[str, JobMapEntry] = {}
    for e in files:
        entry = _read_entry(os.path.join(map_dir, e.name))
        if entry is not None:
            entries[e.name] = entry
    return entries


class JobMapReader:
    """:func:`read_job_map`, reading only the files that changed since the last scan.

    Args:
        map_dir: The hooks' map folder, or None (no map: always empty).
    """

    def __init__(self, map_dir: str | Path | None) -> None:
        self.map_dir = map_dir
        # name → ((inode, size, mtime, ctime), entry) of the files read at the last scan.
        self._cache: dict[str, tuple[tuple[int, int, int, int], JobMapEntry]] = {}
        # The folder's (inode, mtime, ctime) at the last scan when that scan's folder and
        # files were all settled, and its answer: returned again while the folder is unchanged.
        self._dir_key: tuple[int, int, int] | None = None
        self._entries: dict[str, JobMapEntry] = {}

    def read(self) -> dict[str, JobMapEntry]:
        """Return every job in the map now (what :func:`read_job_map` returns)."""
        if self.map_dir is None:
            return {}
        try:
            dst = os.stat(self.map_dir)
            dir_key: tuple[int, int, int] | None = (dst.st_ino, dst.st_mtime_ns, dst.st_ctime_ns)
        except OSError:
            dir_key = None
        if dir_key is not None and dir_key == self._dir_key:
            return dict(self._entries)
        files = _list_map(self.map_dir, self._cache)
        if files is None:
            self._cache, self._dir_key = {}, None
            return {}
        settled_ns = time.time_ns() - _RACY_NS
        old, cache = self._cache, {}
        entries: dict[str, JobMapEntry] = {}
        for e in files:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # removed by the epilog meanwhile
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            hit = old.get(e.name)
            if hit is not None and hit[0] == key:
                entry = hit[1]
            else:
                entry = _read_entry(e.path)
                if entry is None:
                    continue
            entries[e.name] = entry
            if st.st_mtime_ns < settled_ns and st.st_ctime_ns < settled_ns:
                cache[e.name] = (key, entry)
        self._cache = cache
        dir_settled_ns = settled_ns + _RACY_NS - _DIR_SETTLED_NS
        settled = (
            dir_key is not None and dir_key[1] < dir_settled_ns and dir_key[2] < dir_settled_ns
            and len(cache) == len(entries) == len(files)
        )
        self._dir_key = dir_key if settled else None
        self._entries = dict(entries) if settled else {}
        return entries
