"""The agent's local unix socket for in-job annotations (``jobenergy.client``).

Protocol: one JSON object per connection, newline-terminated, answered by one JSON object.

    {"op": "begin", "phase": "training", "model": "resnet50", "samples": 50000, "tags": {}}
    {"op": "end", "samples": 50000, "metrics": {"accuracy": 0.761}}
    → {"ok": true, "job_id": "1234"}  or  {"ok": false, "error": "..."}

The job is never taken from the message: it is the Slurm job of the connecting process,
found from the socket's peer credentials (SO_PEERCRED) and ``/proc/<pid>/cgroup`` (a job
folder right under Slurm's root cgroup only), so a job can only annotate itself; a peer whose
uid is not the job's owner (root excepted) is refused. Times are the agent's clock, not the
client's.

Everything a job sends is checked here, against the wire schema's limits (``PhaseRecord``),
so that one job's record can never get the node's batch refused and cost co-located jobs
their energy (DESIGN.md decision 14): finite numbers only, no control characters (NUL
included) in any text, the schema's lengths and counts. Resources are shared fairly: at
most ``MAX_CONNECTIONS`` connections are served at once and ``MAX_CONNECTIONS_PER_JOB`` of
them per job, and each job may send ``MESSAGES_PER_S_PER_JOB`` messages per second (bursts
of ``MESSAGE_BURST_PER_JOB``); beyond, the peer gets an error at once. Phases held per job
and sent per interval are capped in :mod:`.phases`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobenergy.agent.annotation_message import parse_message
from jobenergy.agent.cgroupfs import ProcJob, job_of_pid, job_owner_uid
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.phases import PhaseBook, PhaseLimitError
from jobenergy.core.errors import JobEnergyError

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
CONNECTION_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 16
MAX_CONNECTIONS_PER_JOB = 4
MESSAGES_PER_S_PER_JOB = 20.0
MESSAGE_BURST_PER_JOB = 40
#: Rate buckets kept before full (idle) ones are forgotten.
_MAX_BUCKETS = 4096

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


class Refused(Exception):
    """A connection refused before its message is read; ``reason`` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Peer:
    pid: int
    uid: int
    job_id: str


class _RateLimiter:
    """A token bucket per key: ``rate_per_s`` messages per second, bursts of ``burst``."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, monotonic s)

    def allow(self, key: str, now_s: float) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        tokens, last_s = self._buckets.get(key, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + (now_s - last_s) * self.rate_per_s)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now_s)
        if len(self._buckets) > _MAX_BUCKETS:
            self._forget_idle(now_s)
        return allowed

    def _forget_idle(self, now_s: float) -> None:
        """Drop buckets that refilled (their keys are as new): memory stays bounded."""
        full_after_s = self.burst / self.rate_per_s
        self._buckets = {
            k: v for k, v in self._buckets.items() if now_s - v[1] < full_after_s
        }


class AnnotationServer:
    """Accepts annotations on ``socket_path`` and records them in a :class:`PhaseBook`.

    Args:
        socket_path: Where to listen.
        procfs_root: Mount point of procfs (the peers' cgroups).
        book: Where the phases go.
        cgroup_root: Mount point of cgroupfs (the job's owner under cgroup v2).
        metrics: The agent's metrics (refusals are counted there).
    """

    def __init__(
        self,
        socket_path: str | Path,
        procfs_root: str | Path,
        book: PhaseBook,
        cgroup_root: str | Path = "/sys/fs/cgroup",
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.procfs_root = Path(procfs_root)
        self.cgroup_root = Path(cgroup_root)
        self.book = book
        self.metrics = metrics
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}  # job id → connections being served
        self._rate = _RateLimiter(MESSAGES_PER_S_PER_JOB, MESSAGE_BURST_PER_JOB)

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

    def active_connections(self, job_id: str) -> int:
        """Return how many connections of ``job_id`` are being served now."""
        with self._lock:
            return self._active.get(job_id, 0)

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
            try:
                peer = self._admit(conn)
            except Refused as err:
                self._count(err.reason)
                _reply(conn, {"ok": False, "error": str(err)})
                conn.close()
                continue
            except (OSError, JobEnergyError) as err:
                _reply(conn, {"ok": False, "error": str(err)})
                conn.close()
                continue
            # One short-lived thread per connection: a slow client cannot block the others.
            threading.Thread(target=self._connection, args=(conn, peer), daemon=True).start()

    def _admit(self, conn: socket.socket) -> _Peer:
        """Identify the peer's job and take a connection slot for it (at accept, before
        reading: the pid cannot be reused meanwhile, and a refusal costs no thread).

        Raises:
            Refused: Not a process of a job, not the job's owner, or over a limit.
        """
        pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        job = job_of_pid(self.procfs_root, pid)
        if job is None:
            raise Refused("not_in_job", f"process {pid} is not inside a Slurm job on this node")
        self._check_owner(job, uid)
        if not self._rate.allow(job.job_id, time.monotonic()):
            raise Refused(
                "rate",
                f"job {job.job_id} sends more than {MESSAGES_PER_S_PER_JOB:g} annotations "
                "per second: slow down",
            )
        with self._lock:
            if self._active.get(job.job_id, 0) >= MAX_CONNECTIONS_PER_JOB:
                raise Refused(
                    "connections",
                    f"job {job.job_id} has {MAX_CONNECTIONS_PER_JOB} connections open: finish "
                    "one first",
                )
            if sum(self._active.values()) >= MAX_CONNECTIONS:
                raise Refused("busy", "agent busy, try again")
            self._active[job.job_id] = self._active.get(job.job_id, 0) + 1
        return _Peer(pid, uid, job.job_id)

    def _check_owner(self, job: ProcJob, uid: int) -> None:
        """Refuse a peer that is neither root nor the job's owner (when the cgroups say it)."""
        if uid == 0:
            return
        owner = job_owner_uid(self.cgroup_root, job)
        if owner is not None and owner != uid:
            raise Refused(
                "owner", f"uid {uid} does not own job {job.job_id}: only its owner may annotate it"
            )

    def _release(self, job_id: str) -> None:
        with self._lock:
            left = self._active.get(job_id, 0) - 1
            if left > 0:
                self._active[job_id] = left
            else:
                self._active.pop(job_id, None)

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.annotations_refused.labels(reason).inc()

    def _connection(self, conn: socket.socket, peer: _Peer) -> None:
        try:
            with conn:
                try:
                    answer = self._handle(conn, peer)
                except PhaseLimitError as err:
                    self._count("phase_cap")
                    answer = {"ok": False, "error": str(err)}
                except (OSError, ValueError, JobEnergyError) as err:
                    self._count("invalid")
                    answer = {"ok": False, "error": str(err)}
                except Exception:  # never let one message take the socket down
                    logger.exception("annotation failed")
                    answer = {"ok": False, "error": "internal error"}
                _reply(conn, answer)
        finally:
            self._release(peer.job_id)

    def _handle(self, conn: socket.socket, peer: _Peer) -> dict:
        msg = parse_message(_read_message(conn))
        now = datetime.now(UTC)
        if msg.op == "begin":
            self.book.begin(
                peer.job_id, str(msg.phase), msg.model, now, samples=msg.samples, tags=msg.tags
            )
        elif not self.book.end(peer.job_id, now, samples=msg.samples, metrics=msg.metrics):
            raise ValueError(f"job {peer.job_id} has no open phase")
        logger.debug("annotation job_id=%s op=%s phase=%s", peer.job_id, msg.op, msg.phase)
        return {"ok": True, "job_id": peer.job_id}


def _read_message(conn: socket.socket) -> bytes:
    """Read one newline-terminated message of at most ``MAX_MESSAGE_BYTES``, in time."""
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
    return data


def _reply(conn: socket.socket, answer: dict) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass
