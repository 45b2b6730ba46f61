"""One in-job annotation request (``jobenergy.client``), checked without pydantic.

The daemon on every node imports no pydantic (about 9 MB of its resident memory, measured),
so the one message users send it is checked here, in plain code, against the wire schema's
limits (``PhaseRecord``): whatever is accepted here is accepted by the collector too
(``tests/agent/test_annotation_message.py`` holds the two side by side). The checks are
strict: JSON types as the fields declare them (an integer is a number, never a string), no
key beyond the fields, finite numbers only, no control characters in any text. A key given
twice counts once, with its last value (as ``json.loads`` reads it), and that value is checked.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from jobenergy.core.limits import MAX_COUNT, MAX_KEY, MAX_NAME, MAX_PHASE_ITEMS, PHASES
from jobenergy.core.text import printable

OPS = ("begin", "end")
FIELDS = ("op", "phase", "model", "samples", "tags", "metrics", "time")
MAX_PHASE_NAME = 32

#: No control characters (C0, DEL, C1): NUL is refused by PostgreSQL, and the others end up
#: in logs, tables and CSV exports.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: A lone surrogate (``"\ud800"`` is valid JSON syntax): not text, and not encodable.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Message:
    """A checked request."""

    op: str
    phase: str | None = None
    model: str | None = None
    samples: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    time: float | None = None  # the client's clock: informational, the agent's is used


class _Problems:
    """Every problem of one message, each with where it is."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.found.append(f"{where}: {problem}")

    def text(self, value: Any, where: str, max_length: int) -> bool:
        if type(value) is not str:
            self.add(where, f"not a string: {printable(repr(value))[:80]}")
        elif len(value) > max_length:
            self.add(where, f"{len(value)} characters, more than {max_length}")
        elif _CONTROL.search(value):
            self.add(where, "contains a control character")
        else:
            return True
        return False

    def finite(self, value: Any, where: str) -> float | None:
        if type(value) is int:
            try:
                return float(value)
            except OverflowError:
                pass
        elif type(value) is float and math.isfinite(value):
            return value
        self.add(where, f"not a finite number: {printable(repr(value))[:80]}")
        return None

    def table(self, value: Any, where: str) -> dict:
        if type(value) is not dict:
            self.add(where, "not an object")
            return {}
        if len(value) > MAX_PHASE_ITEMS:
            self.add(where, f"{len(value)} items, more than {MAX_PHASE_ITEMS}")
            return {}
        return value


def parse_message(data: bytes) -> Message:
    """Check one request.

    Raises:
        ValueError: The request is not valid, every problem named
            (``bad annotation: <field>: <problem>; ...``).
    """
    try:
        request = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("bad annotation: message: invalid JSON: not UTF-8") from None
    except RecursionError:
        raise ValueError("bad annotation: message: invalid JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, or an integer of over 4300 digits
        raise ValueError(f"bad annotation: message: invalid JSON: {str(err)[:200]}") from None
    problems = _Problems()
    if type(request) is not dict:
        raise ValueError("bad annotation: message: not a JSON object")
    for key in request:
        if key not in FIELDS:
            problems.add(printable(key)[:64], "unknown field")
    if _has_surrogate(request):
        problems.add("message", "invalid JSON: a lone surrogate in a string")
    op = request.get("op")
    if op not in OPS:
        problems.add("op", f"must be one of {', '.join(OPS)}")
    phase = request.get("phase")
    if phase is not None and problems.text(phase, "phase", MAX_PHASE_NAME) and phase not in PHASES:
        problems.add("phase", f"phase must be one of {', '.join(PHASES)}, got {printable(phase)!r}")
    model = request.get("model")
    if model is not None:
        problems.text(model, "model", MAX_NAME)
    samples = request.get("samples")
    if samples is not None and (type(samples) is not int or not 0 <= samples <= MAX_COUNT):
        problems.add("samples", f"not an integer between 0 and {MAX_COUNT}")
    tags = problems.table(request.get("tags", {}), "tags")
    for key, value in tags.items():
        if problems.text(key, "tags", MAX_KEY):
            problems.text(value, f"tags.{key}", MAX_NAME)
    metrics: dict[str, float] = {}
    for key, value in problems.table(request.get("metrics", {}), "metrics").items():
        if problems.text(key, "metrics", MAX_KEY):
            number = problems.finite(value, f"metrics.{key}")
            if number is not None:
                metrics[key] = number
    time = request.get("time")
    if time is not None:
        time = problems.finite(time, "time")
    if problems.found:
        raise ValueError(f"bad annotation: {printable('; '.join(problems.found))[:1000]}")
    return Message(op=op, phase=phase, model=model, samples=samples, tags=dict(tags),
                   metrics=metrics, time=time)


def _has_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a lone surrogate in any string (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if _SURROGATE.search(item):
                return True
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False
