"""The agent's local unix socket for in-job annotations (``jobenergy.client``).

Protocol: one JSON object per connection, newline-terminated, answered by one JSON object.

    {"op": "begin", "phase": "training", "model": "resnet50", "samples": 50000, "tags": {}}
    {"op": "end", "samples": 50000, "metrics": {"accuracy": 0.761}}
    → {"ok": true, "job_id": "1234"}  or  {"ok": false, "error": "..."}

The job is never taken from the message: it is the Slurm job of the connecting process,
found from the socket's peer credentials (SO_PEERCRED) and ``/proc/<pid>/cgroup``, so a job
can only annotate itself. Times are the agent's clock, not the client's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobenergy.agent.cgroupfs import job_id_from_pid
from jobenergy.agent.phases import PhaseBook
from jobenergy.core.errors import JobEnergyError

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
CONNECTION_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 16

Key = Annotated[str, Field(max_length=64)]


class _Message(BaseModel):
    """One request; limits match the wire schema so nothing accepted here is rejected later."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["begin", "end"]
    phase: Annotated[str, Field(max_length=32)] | None = None
    model: Annotated[str, Field(max_length=255)] | None = None
    samples: Annotated[int, Field(ge=0, le=2**62)] | None = None
    tags: dict[Key, Annotated[str, Field(max_length=255)]] = Field(
        default_factory=dict, max_length=64
    )
    metrics: dict[Key, float] = Field(default_factory=dict, max_length=64)
    time: float | None = None  # the client's clock: informational, the agent's is used


_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


class AnnotationServer:
    """Accepts annotations on ``socket_path`` and records them in a :class:`PhaseBook`."""

    def __init__(self, socket_path: str | Path, procfs_root: str | Path, book: PhaseBook) -> None:
        self.socket_path = Path(socket_path)
        self.procfs_root = Path(procfs_root)
        self.book = book
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def start(self) -> None:
        """Bind the socket (mode 0666: any job may connect; identity comes from the kernel)."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o666)
        sock.listen(64)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._serve, name="jobenergy-annotations", daemon=True
        )
        self._thread.start()
        logger.info("annotation socket listening path=%s", self.socket_path)

    def stop(self) -> None:
        """Close the socket and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self.socket_path.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                logger.exception("annotation socket accept failed")
                continue
            if not self._slots.acquire(blocking=False):
                _reply(conn, {"ok": False, "error": "agent busy, try again"})
                conn.close()
                continue
            # One short-lived thread per connection: a slow client cannot block the others.
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                try:
                    answer = self._handle(conn)
                except (OSError, ValueError, JobEnergyError) as err:
                    answer = {"ok": False, "error": str(err)}
                except Exception:  # never let one message take the socket down
                    logger.exception("annotation failed")
                    answer = {"ok": False, "error": "internal error"}
                _reply(conn, answer)
        finally:
            self._slots.release()

    def _handle(self, conn: socket.socket) -> dict:
        pid, _uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        # Resolve the job at once, before reading: the pid cannot be reused meanwhile.
        job_id = job_id_from_pid(self.procfs_root, pid)
        deadline = time.monotonic() + CONNECTION_TIMEOUT_S
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ValueError(f"message not complete within {CONNECTION_TIMEOUT_S} s")
            conn.settimeout(remaining)
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_MESSAGE_BYTES:
                raise ValueError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
        if job_id is None:
            raise ValueError(f"process {pid} is not inside a Slurm job on this node")
        try:
            msg = _Message.model_validate_json(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                for e in err.errors()
            )
            raise ValueError(f"bad annotation: {problems}") from None
        now = datetime.now(UTC)
        if msg.op == "begin":
            self.book.begin(
                job_id, str(msg.phase), msg.model, now, samples=msg.samples, tags=msg.tags
            )
        elif not self.book.end(job_id, now, samples=msg.samples, metrics=msg.metrics):
            raise ValueError(f"job {job_id} has no open phase")
        logger.info("annotation job_id=%s op=%s phase=%s", job_id, msg.op, msg.phase)
        return {"ok": True, "job_id": job_id}


def _reply(conn: socket.socket, answer: dict) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass
