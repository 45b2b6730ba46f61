"""Durable, bounded on-disk spool of sealed batches (DESIGN.md decision 7).

A batch is written here (gzip'd JSON, fsync'd, renamed into place) before it is sent and
deleted only after the collector acknowledged it, so an agent or collector restart delays
data but never loses or doubles it. File names are the zero-padded sequence number, so the
directory listing is the delivery order. The sequence number survives restarts in
``state.json``: the collector de-duplicates on (cluster, node, boot_id, seq), and reusing a
number would make it drop new data as a duplicate. The state reserves numbers in blocks of
:data:`SEQ_BLOCK` (written once per block, not once per batch: two fewer fsyncs per seal); a
restart starts after the reserved block, so it skips numbers, never reuses one. The
collector needs no consecutive numbers: they are keys, not a count.

When the spool exceeds ``max_bytes`` the oldest batches are dropped (logged at ERROR and
counted): a node cut off from the collector for days must not fill its disk.

The folders are 0700 and every file 0600 whatever the umask: the sequence number in
``state.json`` and the batches would let a local user predict and claim the node's next batch
keys, or read what jobs ran.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jobenergy.core.errors import SpoolError

logger = logging.getLogger(__name__)

_SUFFIX = ".json.gz"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
#: Sequence numbers reserved per write of ``state.json``: a restart skips at most this many.
SEQ_BLOCK = 1000


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """A sealed batch waiting in the spool."""

    seq: int
    path: Path
    size_bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), mode 0600.

    The mode is set on the open file descriptor, so neither the umask nor a stale temp file
    left with other permissions can make it readable by others.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    with open(fd, "wb") as fh:
        os.fchmod(fd, _FILE_MODE)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700, also when it existed before."""
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, _DIR_MODE)


def split_by_size(texts: list[str], budget_bytes: int) -> list[list[str]]:
    """Group JSON texts, in order, so that each group joined with commas fits ``budget_bytes``.

    Sizes are UTF-8 bytes. A text larger than the budget on its own makes a group alone: the
    caller decides what to do with it (an interval cannot be cut in two).
    """
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for text in texts:
        size = utf8_len(text) + 1  # the comma
        if current and used + size > budget_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(text)
        used += size
    if current:
        groups.append(current)
    return groups


def utf8_len(text: str) -> int:
    """Return the UTF-8 size of ``text`` (without encoding ASCII, by far the usual case)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Spool:
    """Batches on disk, oldest first.

    Args:
        spool_dir: Folder owned by the agent; created if missing.
        max_bytes: Size cap of the pending batches.
        seq_block: Sequence numbers reserved per write of ``state.json``.
    """

    def __init__(self, spool_dir: str | Path, max_bytes: int = 256 * 1024 * 1024,
                 seq_block: int = SEQ_BLOCK) -> None:
        self.dir = Path(spool_dir)
        self.batches_dir = self.dir / "batches"
        self.rejected_dir = self.dir / "rejected"
        self.max_bytes = max_bytes
        self.seq_block = max(1, seq_block)
        self.dropped_total = 0
        self.rejected_total = 0
        try:
            for folder in (self.dir, self.batches_dir, self.rejected_dir):
                make_private_dir(folder)
        except OSError as err:
            raise SpoolError(f"cannot create spool folder {self.dir}: {err}") from err
        self._next_seq = self._load_next_seq()
        self._reserved_seq = self._next_seq  # numbers below it are covered by state.json

    # -- sequence numbers -------------------------------------------------------------
    def _load_next_seq(self) -> int:
        state_seq: int | None = None
        state_file = self.dir / "state.json"
        if state_file.exists():
            try:
                state_seq = int(json.loads(state_file.read_text())["next_seq"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning(
                    "spool state unreadable, numbering from the clock path=%s err=%s",
                    state_file,
                    err,
                )
        pending = self.pending()
        file_seq = pending[-1].seq + 1 if pending else 0
        if state_seq is None:
            # First start, or the state was lost or garbled: numbers from the clock (µs)
            # cannot collide with any an earlier agent in this boot used, so nothing is
            # dropped as a duplicate.
            state_seq = time.time_ns() // 1000
        return max(state_seq, file_seq)

    def _reserve(self, seq: int) -> None:
        """Make sure ``state.json`` covers ``seq``: a restart then starts above it."""
        if seq < self._reserved_seq:
            return
        reserved = seq + self.seq_block
        write_private(self.dir / "state.json", json.dumps({"next_seq": reserved}).encode())
        self._reserved_seq = reserved

    # -- batches ----------------------------------------------------------------------
    def seal(
        self, batch_fields: dict, raw_json_fields: dict[str, str] | None = None
    ) -> SpooledBatch:
        """Give the batch the next sequence number and write it durably.

        Args:
            batch_fields: The batch as JSON-ready dict, without ``seq``.
            raw_json_fields: Members already serialised to JSON text (the intervals, written
                once by ``agent/wire.py``).

        Returns:
            The spooled batch.
        """
        seq = self._next_seq
        text = json.dumps({**batch_fields, "seq": seq}, separators=(",", ":"))
        if raw_json_fields:
            extra = ",".join(f"{json.dumps(k)}:{v}" for k, v in raw_json_fields.items())
            text = f"{text[:-1]},{extra}}}"
        # Level 1: the agent's CPU matters more than a few bytes more on the wire.
        payload = gzip.compress(text.encode(), compresslevel=1)
        path = self.batches_dir / f"{seq:020d}{_SUFFIX}"
        try:
            # State first: a crash in between skips seq numbers, never reuses one.
            self._reserve(seq)
            self._next_seq = seq + 1
            write_private(path, payload)
        except OSError as err:
            raise SpoolError(f"cannot write batch seq={seq} to {path}: {err}") from err
        self._enforce_cap()
        return SpooledBatch(seq, path, len(payload))

    def pending(self) -> list[SpooledBatch]:
        """Return the batches not yet acknowledged, oldest first."""
        out = []
        try:
            entries = list(os.scandir(self.batches_dir))
        except OSError as err:
            raise SpoolError(f"cannot list spool {self.batches_dir}: {err}") from err
        for entry in entries:
            name = entry.name
            if not name.endswith(_SUFFIX) or name.startswith("."):
                continue
            try:
                seq = int(name[: -len(_SUFFIX)])
                size = entry.stat().st_size
            except (ValueError, OSError):
                continue
            out.append(SpooledBatch(seq, Path(entry.path), size))
        out.sort(key=lambda b: b.seq)
        return out

    def pending_count(self) -> int:
        """Return how many batches wait (a cheap listing, for metrics)."""
        try:
            return sum(
                1
                for n in os.listdir(self.batches_dir)
                if n.endswith(_SUFFIX) and not n.startswith(".")
            )
        except OSError:
            return 0

    def pending_bytes(self) -> int:
        """Return the size of the pending batches, bytes."""
        return sum(b.size_bytes for b in self.pending())

    def read(self, batch: SpooledBatch) -> bytes:
        """Return the gzip'd JSON body of a spooled batch."""
        return batch.path.read_bytes()

    def ack(self, batch: SpooledBatch) -> None:
        """Delete a batch the collector acknowledged."""
        batch.path.unlink(missing_ok=True)

    def reject(self, batch: SpooledBatch, reason: str) -> Path | None:
        """Move a batch the collector refused (4xx) aside so it does not block the queue.

        The batch is kept, never deleted, with the collector's answer next to it
        (``<seq>.json.reason``); the caller logs and counts the refusal.

        Returns:
            Where the batch is kept, or None when the size cap dropped it meanwhile.
        """
        self.rejected_total += 1
        target = self.rejected_dir / batch.path.name
        try:
            os.replace(batch.path, target)
        except FileNotFoundError:
            return None  # dropped by the size cap meanwhile
        try:
            write_private(target.with_suffix(".reason"), reason.encode("utf-8", "replace"))
        except OSError as err:
            logger.warning("cannot write refusal reason path=%s err=%s", target, err)
        return target

    def _enforce_cap(self) -> None:
        pending = self.pending()
        total = sum(b.size_bytes for b in pending)
        while pending and total > self.max_bytes and len(pending) > 1:
            oldest = pending.pop(0)
            total -= oldest.size_bytes
            oldest.path.unlink(missing_ok=True)
            self.dropped_total += 1
            logger.error(
                "spool full, dropped oldest batch seq=%s max_bytes=%s dropped_total=%s",
                oldest.seq,
                self.max_bytes,
                self.dropped_total,
            )
