"""The annotation check without pydantic (agent/annotation_message.py) against the wire schema.

What the socket accepts must be accepted by the collector's ``PhaseRecord`` with the same
values (else one job's annotation would get its node's batch refused), and it must refuse
what a strict pydantic model of the same fields refuses: the model below is the oracle the
agent used before it stopped importing pydantic.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobenergy.agent.annotation_message import FIELDS, Message, parse_message
from jobenergy.core.limits import MAX_COUNT, PHASES
from jobenergy.core.schema import PhaseRecord

_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _text(max_length: int) -> Any:
    return Annotated[str, Field(max_length=max_length, pattern=_NO_CONTROL)]


_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Oracle(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    op: Literal["begin", "end"]
    phase: _text(32) | None = None
    model: _text(255) | None = None
    samples: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    tags: dict[_text(64), _text(255)] = Field(default_factory=dict, max_length=64)
    metrics: dict[_text(64), _Finite] = Field(default_factory=dict, max_length=64)
    time: _Finite | None = None

    @field_validator("phase")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in PHASES:
            raise ValueError("unknown phase")
        return value


def _accepted(data: bytes) -> Message | None:
    try:
        return parse_message(data)
    except ValueError as err:
        assert str(err).startswith("bad annotation: ")
        assert "\n" not in str(err) and len(str(err)) <= 1100
        return None


def _oracle_accepts(data: bytes) -> bool:
    try:
        _Oracle.model_validate_json(data)
    except ValidationError:
        return False
    return True


def _wire_record(msg: Message) -> PhaseRecord:
    start = datetime(2026, 12, 3, tzinfo=UTC)
    return PhaseRecord(job_id="12", phase=msg.phase or "other", model=msg.model, start=start,
                       end=start + timedelta(seconds=1), samples=msg.samples,
                       metrics=msg.metrics, tags=msg.tags)


_EDGE_TEXT = st.one_of(
    st.sampled_from(["", "training", "inference", "other", "x\x00y", "a\nb", "a\x9bb", "é",
                     "\x7f", "k" * 64, "k" * 65, "v" * 255, "v" * 256, "t" * 32, "t" * 33]),
    st.text(max_size=40),
)
_NUMBER = st.one_of(
    st.integers(min_value=-(10**16), max_value=10**16),
    st.sampled_from([0, MAX_COUNT, MAX_COUNT + 1, -1, 10**400, 1.0, 0.5, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_SCALAR = st.one_of(st.none(), st.booleans(), _NUMBER, _EDGE_TEXT)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_EDGE_TEXT, inner, max_size=3)),
    max_leaves=6,
)
_TABLE = st.one_of(
    st.dictionaries(_EDGE_TEXT, st.one_of(_NUMBER, _EDGE_TEXT), max_size=4),
    st.integers(63, 66).map(lambda n: {f"k{i}": 1 for i in range(n)}),  # around the limit
    _VALUE,
)
_FIELD_VALUES = {
    "op": st.one_of(st.sampled_from(["begin", "end", "BEGIN", ""]), _VALUE),
    "phase": st.one_of(st.sampled_from([*PHASES, None]), _VALUE),
    "model": st.one_of(st.none(), _EDGE_TEXT, _VALUE),
    "samples": st.one_of(st.none(), _NUMBER, _VALUE),
    "tags": _TABLE,
    "metrics": _TABLE,
    "time": st.one_of(st.none(), _NUMBER, _VALUE),
}
_MESSAGE = st.fixed_dictionaries(
    {}, optional={**_FIELD_VALUES, "extra": _VALUE},
)


@settings(max_examples=1500, deadline=None)
@given(_MESSAGE)
def test_the_check_agrees_with_the_strict_model_and_the_wire(request):
    data = json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass")
    msg = _accepted(data)
    assert (msg is not None) == _oracle_accepts(data), data[:300]
    if msg is not None:
        record = _wire_record(msg)
        assert msg.op == request["op"]
        assert record.model == request.get("model")
        assert record.samples == request.get("samples")
        assert record.tags == request.get("tags", {})
        assert record.metrics == {k: float(v) for k, v in request.get("metrics", {}).items()}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"op": "begin"', "invalid JSON"),
        (b"[" * 50_000 + b"]" * 50_000, "invalid JSON"),  # deeper than the interpreter's stack
        (b'{"op": "end", "samples": ' + b"9" * 5000 + b"}", "invalid JSON"),  # over 4300 digits
        (b'{"op": "end", "samples": "5"}', "samples"),
        (b'{"op": "end", "samples": true}', "samples"),
        (b'{"op": "end", "samples": 5.0}', "samples"),
        (b'{"op": "end", "metrics": {"loss": "1.5"}}', "metrics.loss"),
        (b'{"op": "end", "metrics": {"loss": true}}', "metrics.loss"),
        (b'{"op": "end", "metrics": {"loss": ' + b"9" * 400 + b"}}", "finite number"),
        (b'{"op": "end", "tags": {"\\ud800": "x"}}', "surrogate"),
        (b'{"op": "end", "tags": {"a\\u0085": "x"}}', "tags"),
        (b'{"op": "end", "jobid": "99"}', "jobid: unknown field"),
        (b'{"op": "stop"}', "op"),
        (b'{"phase": "training"}', "op"),
    ],
)
def test_refusals_name_the_problem(data, problem):
    with pytest.raises(ValueError, match="^bad annotation: ") as err:
        parse_message(data)
    assert problem in str(err.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError) as err:
        parse_message(b'{"op": "x", "model": "a\\nb", "samples": -1, "time": "now"}')
    for name in ("op", "model", "samples", "time"):
        assert f"{name}: " in str(err.value)


def test_an_accepted_message_keeps_its_values():
    body = {"op": "end", "samples": 7, "metrics": {"acc": 1, "loss": 0.25},
            "tags": {"lr": "3e-4"}, "time": 12.5}
    msg = parse_message(json.dumps(body).encode())
    assert msg == Message(op="end", samples=7, metrics={"acc": 1.0, "loss": 0.25},
                          tags={"lr": "3e-4"}, time=12.5)
    assert type(msg.metrics["acc"]) is float
    assert set(FIELDS) == set(Message.__dataclass_fields__)


@pytest.mark.parametrize(
    "request_",
    [
        *({"op": "end", table: {f"k{i}": value for i in range(n)}}
          for table, value in (("metrics", 1.5), ("tags", "v")) for n in (64, 65)),
        *({"op": "end", table: {"k" * n: value}}
          for table, value in (("metrics", 1.5), ("tags", "v")) for n in (64, 65)),
        *({"op": "begin", "phase": "other", "tags": {"k": "v" * n}} for n in (255, 256)),
        *({"op": "begin", "phase": "other", "model": "m" * n} for n in (255, 256)),
        *({"op": "end", "samples": n} for n in (0, -1, MAX_COUNT, MAX_COUNT + 1)),
    ],
)
def test_limits_at_the_boundary_are_the_models(request_):
    data = json.dumps(request_).encode()
    msg = _accepted(data)
    assert (msg is not None) == _oracle_accepts(data)
    if msg is not None:
        _wire_record(msg)
