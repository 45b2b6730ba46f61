"""Tell the node's jobenergy agent what a job is doing, so its energy is split by phase.

    from jobenergy.client import phase

    with phase("training", model="resnet50", samples=50_000) as p:
        train()
        p.metrics["accuracy"] = 0.761   # optional quality metrics, recorded with the phase
    with phase("inference", model="resnet50") as p:
        p.samples = evaluate()          # samples may also be set at the end

The agent identifies the job from the caller's cgroup (the socket's peer credentials), so a
job can only annotate itself. Energy is split on the agent's sample boundaries: an interval
belongs to the phase that covered most of it. Standard library only, and never fatal: if no
agent listens, a warning is logged and the job carries on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/jobenergy/agent.sock"
PHASES = ("training", "inference", "other")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class AnnotationError(Exception):
    """The agent refused an annotation (bad phase, not inside a Slurm job, ...)."""


def _socket_path() -> str:
    """Return the agent's socket: ``$JOBENERGY_SOCKET``, else the one of this job's node.

    Slurm sets ``SLURMD_NODENAME`` in every job; the agent of that node listens on
    ``/run/jobenergy/<node>/agent.sock`` by default (several slurmd per host each have
    their own). ``DEFAULT_SOCKET`` is the fallback outside a job or for older agents.
    """
    explicit = os.environ.get("JOBENERGY_SOCKET")
    if explicit:
        return explicit
    node = os.environ.get("SLURMD_NODENAME", "")
    if node and "/" not in node and node not in (".", ".."):
        per_node = f"/run/jobenergy/{node}/agent.sock"
        if os.path.exists(per_node):
            return per_node
    return DEFAULT_SOCKET


def check_message(message: dict[str, Any]) -> dict[str, Any]:
    """Return ``message`` with metrics as floats, or say what the agent would refuse.

    The agent checks everything itself; this only gives a job a clear error before it sends:
    metrics must be finite numbers (NaN and infinity have no JSON form and mean nothing as
    a quality figure) and no text may hold control characters.

    Raises:
        AnnotationError: A metric is not a finite number or a text holds a control character.
    """
    given, tags = message.get("metrics") or {}, message.get("tags") or {}
    if not isinstance(given, dict) or not isinstance(tags, dict):
        return message  # not this function's business: the agent names the problem
    metrics = {key: _finite(key, value) for key, value in given.items()}
    texts = [message.get("model"), *tags, *tags.values(), *metrics]
    for text in texts:
        if isinstance(text, str) and _CONTROL.search(text):
            raise AnnotationError(f"{text[:40]!r} holds a control character")
    return {**message, "metrics": metrics} if "metrics" in message else message


def _finite(key: str, value: Any) -> float:
    """Return a metric as a float (numpy scalars and Decimals must not crash a job)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"metric {key!r} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise AnnotationError(f"metric {key!r} is {number}: only finite numbers can be recorded")
    return number


def send(message: dict[str, Any], *, timeout_s: float = 2.0) -> dict[str, Any]:
    """Send one request to the agent and return its JSON answer.

    Raises:
        OSError: No agent listens on the socket.
        AnnotationError: The agent answered with an error, or :func:`check_message` found
            what it would refuse.
    """
    message = check_message(message)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(_socket_path())
        # default=float: numpy scalars and Decimals in samples must not crash a job.
        body = json.dumps(message, default=float, allow_nan=False)
        try:
            sock.sendall(body.encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before reading (over a limit): the answer says why
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    if not answer.get("ok"):
        raise AnnotationError(answer.get("error", "agent refused the annotation"))
    return answer


@dataclass
class Phase:
    """An open phase; set ``samples`` and ``metrics`` before it closes."""

    name: str
    model: str | None = None
    samples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None


@contextmanager
def phase(
    name: str,
    *,
    model: str | None = None,
    samples: int | None = None,
    strict: bool = False,
    **tags: str,
):
    """Mark the enclosed code as one phase of this job (``training``/``inference``/``other``).

    Args:
        name: The phase.
        model: Model name, e.g. "resnet50".
        samples: Samples processed in the phase, if known up front (else set ``.samples``).
        strict: Raise instead of warning when the agent cannot be told.
        **tags: Free tags recorded with the phase.
    """
    if name not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {name!r}")
    current = Phase(name, model, samples, tags=dict(tags))
    try:
        answer = send(
            {
                "op": "begin",
                "phase": name,
                "model": model,
                "samples": samples,
                "tags": current.tags,
                "time": time.time(),
            }
        )
        current.job_id = answer.get("job_id")
    except (OSError, AnnotationError, ValueError, TypeError) as err:
        if strict:
            raise
        logger.warning("jobenergy: phase %r not recorded: %s", name, err)
    try:
        yield current
    finally:
        try:
            send(
                {
                    "op": "end",
                    "phase": name,
                    "samples": current.samples,
                    "metrics": current.metrics,
                    "time": time.time(),
                }
            )
        except (OSError, AnnotationError, ValueError, TypeError) as err:
            if strict:
                raise
            logger.warning("jobenergy: end of phase %r not recorded: %s", name, err)
