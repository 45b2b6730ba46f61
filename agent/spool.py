"""Durable, bounded on-disk spool of sealed batches (DESIGN.md decision 7).

A batch is written here (gzip'd JSON, fsync'd, renamed into place) before it is sent and
deleted only after the collector acknowledged it, so an agent or collector restart delays
data but never loses or doubles it. File names are the zero-padded sequence number, so the
directory listing is the delivery order. The sequence number survives restarts in
``state.json``: the collector de-duplicates on (cluster, node, boot_id, seq), and reusing a
number would make it drop new data as a duplicate.

When the spool exceeds ``max_bytes`` the oldest batches are dropped (logged at ERROR and
counted): a node cut off from the collector for days must not fill its disk.
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """Batches on disk, oldest first.

    Args:
        spool_dir: Folder owned by the agent; created if missing.
        max_bytes: Size cap of the pending batches.
    """

    def __init__(self, spool_dir: str | Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.dir = Path(spool_dir)
        self.batches_dir = self.dir / "batches"
        self.rejected_dir = self.dir / "rejected"
        self.max_bytes = max_bytes
        self.dropped_total = 0
        self.rejected_total = 0
        try:
            self.batches_dir.mkdir(parents=True, exist_ok=True)
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SpoolError(f"cannot create spool folder {self.dir}: {err}") from err
        self._next_seq = self._load_next_seq()

    # -- sequence numbers -------------------------------------------------------------
    def _load_next_seq(self) -> int:
        state_seq = 0
        state_file = self.dir / "state.json"
        if state_file.exists():
            try:
                state_seq = int(json.loads(state_file.read_text())["next_seq"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning(
                    "spool state unreadable, deriving seq from files path=%s err=%s",
                    state_file,
                    err,
                )
        pending = self.pending()
        file_seq = pending[-1].seq + 1 if pending else 0
        if not state_file.exists():
            # First start, or the state was lost: numbers from the clock (µs) cannot collide
            # with any an earlier agent in this boot used, so nothing is dropped as duplicate.
            state_seq = time.time_ns() // 1000
        return max(state_seq, file_seq)

    def _save_next_seq(self) -> None:
        _write_atomic(self.dir / "state.json", json.dumps({"next_seq": self._next_seq}).encode())

    # -- batches ----------------------------------------------------------------------
    def seal(
        self, batch_fields: dict, raw_json_fields: dict[str, str] | None = None
    ) -> SpooledBatch:
        """Give the batch the next sequence number and write it durably.

        Args:
            batch_fields: The batch as JSON-ready dict, without ``seq``.
            raw_json_fields: Members already serialised to JSON text (the intervals, which
                pydantic serialises several times faster than ``json.dumps`` of dicts).

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
            self._next_seq = seq + 1
            # State first: a crash in between skips a seq number, never reuses one.
            self._save_next_seq()
            _write_atomic(path, payload)
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

    def reject(self, batch: SpooledBatch, reason: str) -> None:
        """Move a batch the collector refused (4xx) aside so it does not block the queue."""
        self.rejected_total += 1
        target = self.rejected_dir / batch.path.name
        try:
            os.replace(batch.path, target)
            target.with_suffix(".reason").write_text(reason)
        except FileNotFoundError:
            return  # dropped by the size cap meanwhile
        logger.error(
            "collector rejected batch seq=%s kept_at=%s reason=%s", batch.seq, target, reason
        )

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
