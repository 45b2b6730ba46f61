"""The agent's wire JSON (agent/wire.py) against the pydantic wire models (core/schema.py).

The agent checks and writes its intervals without the models; for any interval it may build
(the agent's types, values across every limit), it must refuse exactly what the models refuse
and write exactly the bytes ``Interval.model_validate(...).model_dump_json()`` writes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from jobenergy.agent import wire
from jobenergy.core import limits
from jobenergy.core.schema import Interval, JobSample, PhaseRecord, SourceEnergy


def _pydantic(fields: dict) -> str | None:
    try:
        return Interval.model_validate(fields).model_dump_json()
    except ValidationError:
        return None


def _agent(fields: dict) -> str | None:
    try:
        return wire.interval_json(fields)
    except wire.WireError:
        return None


# -- strategies: valid intervals of the agent's types, then each limit broken in turn --------

def _int(high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([0, 1, high - 1, high]), st.integers(0, high))


def _opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


#: Plain text, and what JSON escapes or passes through (quotes, control characters but NUL,
#: DEL, separators, non-ASCII), as jobs' tags and model names may hold.
_CHARS = st.one_of(
    st.sampled_from("abcXYZ019_-.:+ "),
    st.sampled_from(['"', "\\", "\n", "\t", "\x01", "\x1f", "\x7f", "\u2028", "\u0085",
                     "\u00e9", "\U0001f600", "/"]),
    st.characters(exclude_characters="\x00"),  # no surrogates: Unicode text
)


@st.composite
def _text(draw, high: int, low: int = 0) -> str:
    size = draw(st.one_of(st.sampled_from([low, high]), st.integers(low, min(high, 12))))
    return "".join(draw(st.lists(_CHARS, min_size=size, max_size=size)))


_JOB_ID = st.one_of(
    st.from_regex(r"\A[0-9]{1,9}(_[0-9]{1,4})?\Z"),
    st.sampled_from(["s0123456789abc", "12+1", "7.batch:x", "a" * 64]),
)
_ZONES = [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=14))]


@st.composite
def _time(draw) -> datetime:
    """A time in [1970, 2100) UTC, naive (meaning UTC) or in another zone."""
    utc = draw(st.one_of(
        st.sampled_from([limits.TIME_MIN, limits.TIME_MAX - timedelta(microseconds=1)]),
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31),
                     timezones=st.just(UTC)),
    ))
    zone = draw(st.sampled_from([None, *_ZONES]))
    return utc.replace(tzinfo=None) if zone is None else utc.astimezone(zone)


_FLOAT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-5, -1e-5, 1.234e-5, 1e-6, 1e16, 9.999e15, 1e-320, -0.0, 5e-324]),
    st.integers(-(10**20), 10**20),
)


@st.composite
def _source(draw, name: str, jobs: list[str]) -> dict:
    component = draw(st.sampled_from(limits.COMPONENTS))
    holders = [] if component in limits.NODE_ONLY_COMPONENTS else draw(
        st.lists(st.sampled_from(jobs), max_size=4, unique=True))
    shares = {j: draw(_int(10**17)) for j in holders}
    unattributed = draw(_int(10**17))
    return {
        "component": component,
        "source": name,
        "device_name": draw(_opt(_text(limits.MAX_DEVICE_NAME))),
        "measured_uj": sum(shares.values()) + unattributed,
        "jobs_uj": shares,
        "unattributed_uj": unattributed,
        "estimated": draw(st.booleans()),
        "wraps": draw(_int(limits.MAX_WRAPS)),
        "resets": draw(_int(limits.MAX_WRAPS)),
    }


@st.composite
def _job(draw, job_id: str) -> dict:
    return {
        "job_id": job_id,
        "uid": draw(_opt(_int(limits.MAX_UID))),
        "cpus": draw(_opt(_int(limits.MAX_COUNT))),
        "cpu_time_us": draw(_int(limits.MAX_ENERGY_UJ)),
        "ended": draw(st.booleans()),
        "step_ids": draw(st.lists(_text(limits.MAX_STEP_NAME), max_size=3)),
        "step_cpu_us": draw(st.dictionaries(
            st.one_of(st.sampled_from(["batch", "0", "extern"]), _text(limits.MAX_STEP_NAME, 1)),
            _int(limits.MAX_ENERGY_UJ), max_size=3)),
        "phase": draw(_opt(st.sampled_from(limits.PHASES))),
        "model": draw(_opt(_text(limits.MAX_NAME))),
        "alive_us": draw(_opt(_int(limits.MAX_ALIVE_US))),
    }


@st.composite
def _step_uj(draw, job_id: str, sources: list[dict]) -> dict:
    """A merged interval's split over steps: within the job's energy of each component,
    or (now and then) more than it, or for a component it has no share of."""
    have: dict[str, int] = {}
    for src in sources:
        if job_id in src["jobs_uj"]:
            have[src["component"]] = have.get(src["component"], 0) + src["jobs_uj"][job_id]
    split = {}
    for component, energy_uj in have.items():
        first = draw(st.integers(0, energy_uj))
        second = draw(st.integers(0, energy_uj - first))
        split[component] = {"batch": first, "0": second}
        if draw(st.integers(0, 5)) == 0:
            split[component]["0"] = energy_uj - first + 1  # one µJ too many
    if draw(st.integers(0, 5)) == 0:
        split[draw(st.sampled_from(limits.COMPONENTS))] = {"batch": draw(_int(10))}
    if split and draw(st.integers(0, 9)) == 0:  # a step the sample does not list
        split[next(iter(split))][draw(st.sampled_from(["outside", "extern", "7"]))] = 0
    if split and draw(st.integers(0, 9)) == 0:  # more steps than a job may have
        split[next(iter(split))] = {str(i): 0 for i in range(limits.MAX_STEPS_PER_JOB + 1)}
    return split


@st.composite
def _phase(draw, job_id: str) -> dict:
    return {
        "job_id": job_id,
        "phase": draw(st.sampled_from(limits.PHASES)),
        "model": draw(_opt(_text(limits.MAX_NAME))),
        "start": draw(_time()),
        "end": draw(_time()),
        "samples": draw(_opt(_int(limits.MAX_COUNT))),
        "metrics": draw(st.dictionaries(_text(limits.MAX_KEY), _FLOAT, max_size=3)),
        "tags": draw(st.dictionaries(_text(limits.MAX_KEY), _text(limits.MAX_NAME), max_size=3)),
    }


@st.composite
def valid_intervals(draw) -> dict:
    start = draw(_time())
    if limits.check_time(start) > limits.TIME_MAX - timedelta(seconds=1):
        start -= timedelta(hours=1)  # leave room for the interval
    utc_start = limits.check_time(start)
    longest_us = min(limits.MAX_INTERVAL_S * 10**6,
                     (limits.TIME_MAX - utc_start) // timedelta(microseconds=1) - 1)
    span_us = draw(st.one_of(st.sampled_from([1, longest_us]),
                             st.integers(1, min(longest_us, 120 * 10**6))))
    end = start + timedelta(microseconds=span_us)
    jobs = draw(st.lists(_JOB_ID, min_size=1, max_size=4, unique=True))
    names = draw(st.lists(st.one_of(
        st.sampled_from(["package-0", "package-0/dram", "gpu/GPU-1", "psys-0"]),
        _text(limits.MAX_NAME, 1)), max_size=4, unique=True))
    sources = [draw(_source(name, jobs)) for name in names]
    bound = int(span_us / 1e6 * limits.MAX_SOURCE_POWER_W * 1_000_000)
    for src in sources:  # the absurd-power bound of the interval's length
        if src["measured_uj"] > bound:
            src.update(measured_uj=bound, jobs_uj={}, unattributed_uj=bound)
    samples = [draw(_job(j)) for j in jobs if draw(st.booleans())]
    for job in samples:
        roll = draw(st.integers(0, 3))
        if roll == 0:  # a merged interval's split: steps with CPU time (mostly)
            job["step_cpu_us"] = {"batch": draw(st.integers(0, 10**6)),
                                  "0": draw(st.integers(1, 10**6))}
            job["step_uj"] = draw(_step_uj(job["job_id"], sources))
        elif roll == 1:
            job["step_uj"] = None  # as absent
    return {
        "start": start,
        "end": end,
        "sources": sources,
        "jobs": samples,
        "phases": [draw(_phase(j)) for j in jobs if draw(st.integers(0, 2)) == 0],
    }


_BAD_TEXT = st.sampled_from(["", "\x00", "a\x00b", "\udcff", "x" * 256, "\ud800z"])
_BAD_INT = st.sampled_from([-1, 2**32, 10**18 + 1, 86_400_000_001, 1001, 10**15 + 1])
_BAD_ID = st.sampled_from(["", "1 2", "1\n", "\u00e9", "a" * 65, "1/2"])
_BAD_TIME = st.sampled_from([
    datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC),
    datetime(2099, 12, 31, 23, 0), datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=2))),
])


@st.composite
def broken(draw, fields: dict) -> dict:
    """``fields`` with one value on the wrong side of a limit (or left valid)."""
    out = {**fields, "sources": [dict(s) for s in fields["sources"]],
           "jobs": [dict(j) for j in fields["jobs"]], "phases": [dict(p) for p in fields["phases"]]}
    kind = draw(st.sampled_from(["source", "job", "phase", "interval"]))
    records = {"source": out["sources"], "job": out["jobs"], "phase": out["phases"]}.get(kind)
    if kind == "interval" or not records:
        what = draw(st.sampled_from(["start", "end", "span", "twice", "absurd"]))
        if what in ("start", "end"):
            out[what] = draw(_BAD_TIME)
        elif what == "span":
            out["end"] = out["start"] + draw(st.sampled_from(
                [timedelta(0), -timedelta(microseconds=1),
                 timedelta(seconds=limits.MAX_INTERVAL_S, microseconds=1)]))
        elif what == "twice" and out["sources"]:
            out["sources"].append(dict(out["sources"][0]))
        elif out["sources"]:
            span = limits.check_time(out["end"]) - limits.check_time(out["start"])
            seconds = span.total_seconds()
            bound = int(seconds * limits.MAX_SOURCE_POWER_W * 1_000_000)
            out["sources"][0].update(measured_uj=bound + 1, jobs_uj={}, unattributed_uj=bound + 1)
        return out
    rec = records[draw(st.integers(0, len(records) - 1))]
    key = draw(st.sampled_from(sorted(rec)))
    value = rec[key]
    if key in ("job_id",):
        rec[key] = draw(_BAD_ID)
    elif key in ("start", "end"):
        rec[key] = draw(_BAD_TIME)
    elif key in ("component", "phase"):
        rec[key] = draw(st.sampled_from(["fan", "Training", "sleep", "", "cpu", "training"]))
    elif key in ("estimated", "ended") or value is None and key in ("device_name", "model"):
        rec[key] = draw(st.one_of(st.just(None), _BAD_TEXT)) if key in ("device_name", "model") \
            else draw(st.booleans())
    elif isinstance(value, bool):
        rec[key] = not value
    elif isinstance(value, int) or value is None:
        rec[key] = draw(_BAD_INT)
    elif isinstance(value, str):
        rec[key] = draw(_BAD_TEXT)
    elif isinstance(value, list):
        rec[key] = value + [draw(_BAD_TEXT)]
    elif isinstance(value, dict):
        bad = draw(st.sampled_from(["key", "value", "many"]))
        if bad == "many":
            limit = {"jobs_uj": limits.MAX_JOBS_PER_SOURCE, "step_cpu_us": limits.MAX_STEPS_PER_JOB,
                     "step_uj": len(limits.COMPONENTS)}
            rec[key] = {f"{i}": 0 for i in range(limit.get(key, limits.MAX_PHASE_ITEMS) + 1)}
        elif bad == "key":
            rec[key] = {**value, draw(_BAD_TEXT if key != "jobs_uj" else _BAD_ID): 0}
        elif key == "metrics":
            rec[key] = {**value, "m": draw(st.sampled_from([math.nan, math.inf, -math.inf]))}
        else:
            rec[key] = {**value, "k": draw(st.one_of(_BAD_INT, _BAD_TEXT))}
    if kind == "source" and key in ("jobs_uj", "unattributed_uj", "measured_uj") and \
            draw(st.booleans()):
        # Keep it conserved where the broken value allows: the limit is what is tested.
        shares = rec["jobs_uj"] if isinstance(rec["jobs_uj"], dict) else {}
        if all(type(v) is int for v in shares.values()) and type(rec["unattributed_uj"]) is int:
            rec["measured_uj"] = sum(shares.values()) + rec["unattributed_uj"]
    if kind == "source" and draw(st.integers(0, 5)) == 0:
        rec["measured_uj"] = rec["measured_uj"] + 1 if type(rec["measured_uj"]) is int else 0
    if kind == "source" and draw(st.integers(0, 5)) == 0 and isinstance(rec["jobs_uj"], dict):
        rec["component"] = draw(st.sampled_from(limits.NODE_ONLY_COMPONENTS))
    return out


@st.composite
def intervals(draw) -> dict:
    fields = draw(valid_intervals())
    return fields if draw(st.booleans()) else draw(broken(fields))


_VALID = {
    "start": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "end": datetime(2026, 1, 2, 3, 4, 6, 500_000, tzinfo=UTC),
    "sources": [{
        "component": "cpu", "source": "package-0", "device_name": None, "measured_uj": 10,
        "jobs_uj": {"1": 7}, "unattributed_uj": 3, "estimated": False, "wraps": 0, "resets": 0,
    }],
    "jobs": [{
        "job_id": "1", "uid": 1000, "cpus": 2, "cpu_time_us": 5, "ended": False,
        "step_ids": [], "step_cpu_us": {"batch": 5}, "phase": "training", "model": "m\u00e9",
        "alive_us": None,
    }],
    "phases": [{
        "job_id": "1", "phase": "training", "model": None,
        "start": datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        "end": datetime(2026, 1, 2, 3, 4, 6), "samples": 3,
        "metrics": {"loss": 1e-5, "acc": 1e16, "n": 3}, "tags": {"k": 'v"\n'},
    }],
}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=intervals())
@example(fields=_VALID)
def test_the_agent_refuses_and_writes_what_the_wire_model_does(fields):
    assert _agent(fields) == _pydantic(fields)


def test_a_valid_interval_is_written_as_the_model_writes_it():
    text = wire.interval_json(_VALID)
    assert text == Interval.model_validate(_VALID).model_dump_json()
    assert '"start":"2026-01-02T03:04:05Z","end":"2026-01-02T03:04:06.500000Z"' in text
    assert '"metrics":{"loss":0.00001,"acc":1e+16,"n":3.0}' in text


@settings(max_examples=3000, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_written_as_pydantic_writes_them(value):
    assert wire.float_json(value) == TypeAdapter(float).dump_json(value).decode()


@pytest.mark.parametrize(
    ("model", "fields"),
    [(Interval, wire.INTERVAL_FIELDS), (SourceEnergy, wire.SOURCE_FIELDS),
     (JobSample, wire.JOB_FIELDS_SPLIT), (PhaseRecord, wire.PHASE_FIELDS)],
)
def test_the_agent_writes_every_field_of_the_models_in_their_order(model, fields):
    assert tuple(model.model_fields) == fields


def test_the_phases_and_components_are_the_schemas():
    assert limits.PHASES == tuple(PhaseRecord.model_json_schema()["properties"]["phase"]["enum"])
    assert limits.COMPONENTS == tuple(
        SourceEnergy.model_json_schema()["properties"]["component"]["enum"])
