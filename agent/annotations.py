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
from datetime import UTC, datetime
from pathlib import Path

from jobenergy.agent.cgroups import job_id_from_pid
from jobenergy.agent.phases import PhaseBook

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
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
                raise
            with conn:
                conn.settimeout(2.0)
                try:
                    answer = self._handle(conn)
                except (OSError, ValueError) as err:
                    answer = {"ok": False, "error": str(err)}
                try:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass

    def _handle(self, conn: socket.socket) -> dict:
        pid, _uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_MESSAGE_BYTES:
                raise ValueError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
        job_id = job_id_from_pid(self.procfs_root, pid)
        if job_id is None:
            raise ValueError(f"process {pid} is not inside a Slurm job on this node")
        try:
            msg = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"malformed JSON: {err}") from err
        if not isinstance(msg, dict):
            raise ValueError("message must be a JSON object")
        now = datetime.now(UTC)
        op = msg.get("op")
        samples = msg.get("samples")
        if samples is not None and (not isinstance(samples, int) or samples < 0):
            raise ValueError("samples must be a non-negative integer")
        if op == "begin":
            model = msg.get("model")
            tags = {str(k): str(v) for k, v in (msg.get("tags") or {}).items()}
            self.book.begin(
                job_id, str(msg.get("phase")), model and str(model), now, samples=samples, tags=tags
            )
        elif op == "end":
            metrics = msg.get("metrics") or {}
            if not all(isinstance(v, int | float) for v in metrics.values()):
                raise ValueError("metrics must map names to numbers")
            if not self.book.end(
                job_id, now, samples=samples, metrics={str(k): float(v) for k, v in metrics.items()}
            ):
                raise ValueError(f"job {job_id} has no open phase")
        else:
            raise ValueError(f"unknown op {op!r}: use begin or end")
        logger.info("annotation job_id=%s op=%s phase=%s", job_id, op, msg.get("phase"))
        return {"ok": True, "job_id": job_id}
