"""The wire ``Interval`` checked and written as JSON without pydantic models.

The agent used to validate each stored interval with ``core/schema.py``'s ``Interval`` and
write it with ``model_dump_json()``. It still sends exactly those bytes and refuses exactly
those intervals, without building the models in the daemon (~1.4 MB of memory for the schema's
validators and serialisers, and the one place the daemon needed them): the checks below are
the schema's, with its limits (``core/limits.py``), and a property test compares both answers
and bytes with the pydantic models (``tests/agent/test_wire.py``), so the two cannot drift.

Input: an interval's fields as the agent makes them (``StoredInterval.wire()``): ``start``,
``end`` (datetimes), ``sources``, ``jobs``, ``phases`` (lists of dicts with every field of
``SourceEnergy``, ``JobSample`` and ``PhaseRecord``, in the models' order), with the agent's
types: ``int`` (never ``bool``) for integers, ``bool``, ``str``, ``float`` or ``int`` for
phase metrics, None where the model allows it. Anything else is refused (:class:`WireError`),
which the models would coerce: the agent never makes it.

Output: what pydantic writes for the same data: compact JSON in field order, UTC times as
``2026-01-02T03:04:05[.ffffff]Z``, text unescaped beyond JSON's rules (``"``, ``\\``, control
characters), floats in their shortest round-trip digits, in decimal notation from 1e-5 to
1e16, else as ``1.5e+16`` / ``2.5e-7``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jobenergy.core.limits import (
    BMC_NOT_ATTRIBUTED,
    COMPONENTS,
    JOB_ID_PATTERN,
    MAX_ALIVE_US,
    MAX_COUNT,
    MAX_DEVICE_NAME,
    MAX_ENERGY_UJ,
    MAX_INTERVAL_S,
    MAX_JOB_ID,
    MAX_JOBS_PER_SOURCE,
    MAX_KEY,
    MAX_NAME,
    MAX_PHASE_ITEMS,
    MAX_SOURCE_POWER_W,
    MAX_SOURCES_PER_INTERVAL,
    MAX_STEP_NAME,
    MAX_STEPS_PER_JOB,
    MAX_UID,
    MAX_WRAPS,
    NODE_ONLY_COMPONENTS,
    PHASES,
    check_time,
)
from jobenergy.core.steps import OUTSIDE_STEP, check_step_split, job_energy_by_component

#: The models' fields, in the order pydantic writes them.
INTERVAL_FIELDS = ("start", "end", "sources", "jobs", "phases")
SOURCE_FIELDS = (
    "component", "source", "device_name", "measured_uj", "jobs_uj", "unattributed_uj",
    "estimated", "wraps", "resets",
)
JOB_FIELDS = (
    "job_id", "uid", "cpus", "cpu_time_us", "ended", "step_ids", "step_cpu_us", "phase",
    "model", "alive_us",
)
#: A job may end with ``step_uj`` (a merged interval's split over steps); left out when None.
JOB_FIELDS_SPLIT = (*JOB_FIELDS, "step_uj")
PHASE_FIELDS = ("job_id", "phase", "model", "start", "end", "samples", "metrics", "tags")

# JOB_ID_PATTERN without its anchors: fullmatch is the schema's ^...$ (Rust's $ is the end).
_JOB_ID_RE = re.compile(JOB_ID_PATTERN.removeprefix("^").removesuffix("$"))
_DUMPS = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
).encode


class WireError(ValueError):
    """The interval would be refused by the wire model; the message says where and why."""


def _fail(where: str, problem: str) -> WireError:
    return WireError(f"{where}: {problem}")


def _int(value: Any, where: str, high: int) -> None:
    if type(value) is not int:
        raise _fail(where, f"not an integer: {value!r}")
    if not 0 <= value <= high:
        raise _fail(where, f"{value} is not between 0 and {high}")


def _opt_int(value: Any, where: str, high: int) -> None:
    if value is not None:
        _int(value, where, high)


def _text(value: Any, where: str, high: int, low: int = 0) -> None:
    """A str of ``low``..``high`` characters without NUL, encodable as UTF-8."""
    if type(value) is not str:
        raise _fail(where, f"not a string: {value!r}")
    if not low <= len(value) <= high:
        raise _fail(where, f"{len(value)} characters, not {low}..{high}")
    if "\x00" in value:
        raise _fail(where, "contains NUL")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate (e.g. undecodable file names)
            raise _fail(where, "not valid Unicode") from err


def _opt_text(value: Any, where: str, high: int) -> None:
    if value is not None:
        _text(value, where, high)


def _job_id(value: Any, where: str) -> None:
    if type(value) is not str or not 1 <= len(value) <= MAX_JOB_ID or not _JOB_ID_RE.fullmatch(
        value
    ):
        raise _fail(where, f"not a job id: {value!r}")


def _bool(value: Any, where: str) -> None:
    if type(value) is not bool:
        raise _fail(where, f"not a boolean: {value!r}")


def _fields(record: Any, names: tuple[str, ...], where: str) -> None:
    if type(record) is not dict or tuple(record) != names:
        got = list(record) if isinstance(record, Mapping) else type(record).__name__
        raise _fail(where, f"fields must be {', '.join(names)}; got {got}")


def _list(value: Any, where: str, high: int) -> None:
    if type(value) is not list:
        raise _fail(where, "not a list")
    if len(value) > high:
        raise _fail(where, f"{len(value)} items, at most {high}")


def _dict(value: Any, where: str, high: int) -> None:
    if type(value) is not dict:
        raise _fail(where, "not a dict")
    if len(value) > high:
        raise _fail(where, f"{len(value)} items, at most {high}")


# Fast checks: True when valid (the usual case, no message built); on False the detailed
# checks below find the problem and say it. ``ids``: job ids already found valid.

def _text_ok(value: Any, high: int, low: int = 0) -> bool:
    if type(value) is not str or not low <= len(value) <= high or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_ok(value: Any, ids: set[str]) -> bool:
    if value in ids:
        return True
    if type(value) is str and 1 <= len(value) <= MAX_JOB_ID and _JOB_ID_RE.fullmatch(value):
        ids.add(value)
        return True
    return False


def _source_ok(src: Any, ids: set[str]) -> bool:
    if type(src) is not dict or tuple(src) != SOURCE_FIELDS:
        return False
    (component, source, device_name, measured, shares, unattributed, estimated, wraps,
     resets) = src.values()
    if (
        type(component) is not str or component not in COMPONENTS
        or not _text_ok(source, MAX_NAME, 1)
        or (device_name is not None and not _text_ok(device_name, MAX_DEVICE_NAME))
        or type(measured) is not int or not 0 <= measured <= MAX_ENERGY_UJ
        or type(unattributed) is not int or not 0 <= unattributed <= MAX_ENERGY_UJ
        or type(estimated) is not bool
        or type(wraps) is not int or not 0 <= wraps <= MAX_WRAPS
        or type(resets) is not int or not 0 <= resets <= MAX_WRAPS
        or type(shares) is not dict or len(shares) > MAX_JOBS_PER_SOURCE
    ):
        return False
    attributed = 0
    for job_id, energy_uj in shares.items():
        if job_id not in ids and not _id_ok(job_id, ids):
            return False
        if type(energy_uj) is not int or not 0 <= energy_uj <= MAX_ENERGY_UJ:
            return False
        attributed += energy_uj
    return attributed + unattributed == measured and not (
        shares and component in NODE_ONLY_COMPONENTS)


def _step_uj_ok(step_uj: Any) -> bool:
    if type(step_uj) is not dict or len(step_uj) > len(COMPONENTS):
        return False
    for component, parts in step_uj.items():
        if component not in COMPONENTS or type(parts) is not dict or (
            len(parts) > MAX_STEPS_PER_JOB
        ):
            return False
        for step, energy_uj in parts.items():
            if not _text_ok(step, MAX_STEP_NAME, 1) or type(energy_uj) is not int or not (
                0 <= energy_uj <= MAX_ENERGY_UJ
            ):
                return False
    return True


def _job_ok(job: Any, ids: set[str]) -> bool:
    if type(job) is not dict:
        return False
    keys = tuple(job)
    if keys != JOB_FIELDS and (keys != JOB_FIELDS_SPLIT or (
        job["step_uj"] is not None and not _step_uj_ok(job["step_uj"])
    )):
        return False
    job_id, uid, cpus, cpu_time_us, ended, step_ids, steps, phase, model, alive_us = (
        list(job.values())[:10])
    if (
        not _id_ok(job_id, ids)
        or (uid is not None and (type(uid) is not int or not 0 <= uid <= MAX_UID))
        or (cpus is not None and (type(cpus) is not int or not 0 <= cpus <= MAX_COUNT))
        or type(cpu_time_us) is not int or not 0 <= cpu_time_us <= MAX_ENERGY_UJ
        or type(ended) is not bool
        or type(step_ids) is not list or len(step_ids) > MAX_STEPS_PER_JOB
        or type(steps) is not dict or len(steps) > MAX_STEPS_PER_JOB
        or (phase is not None and (type(phase) is not str or phase not in PHASES))
        or (model is not None and not _text_ok(model, MAX_NAME))
        or (alive_us is not None
            and (type(alive_us) is not int or not 0 <= alive_us <= MAX_ALIVE_US))
    ):
        return False
    for step in step_ids:
        if not _text_ok(step, MAX_STEP_NAME):
            return False
    for step, cpu_us in steps.items():
        if not _text_ok(step, MAX_STEP_NAME, 1) or type(cpu_us) is not int or not (
            0 <= cpu_us <= MAX_ENERGY_UJ
        ):
            return False
    return OUTSIDE_STEP not in steps


# Detailed checks: raise WireError naming the field and the problem.

def _check_source(src: Any, where: str) -> None:
    _fields(src, SOURCE_FIELDS, where)
    if src["component"] not in COMPONENTS or type(src["component"]) is not str:
        raise _fail(f"{where}.component", f"not one of {', '.join(COMPONENTS)}")
    _text(src["source"], f"{where}.source", MAX_NAME, 1)
    _opt_text(src["device_name"], f"{where}.device_name", MAX_DEVICE_NAME)
    _int(src["measured_uj"], f"{where}.measured_uj", MAX_ENERGY_UJ)
    shares = src["jobs_uj"]
    _dict(shares, f"{where}.jobs_uj", MAX_JOBS_PER_SOURCE)
    attributed = 0
    for job_id, energy_uj in shares.items():
        _job_id(job_id, f"{where}.jobs_uj")
        _int(energy_uj, f"{where}.jobs_uj.{job_id}", MAX_ENERGY_UJ)
        attributed += energy_uj
    _int(src["unattributed_uj"], f"{where}.unattributed_uj", MAX_ENERGY_UJ)
    _bool(src["estimated"], f"{where}.estimated")
    _int(src["wraps"], f"{where}.wraps", MAX_WRAPS)
    _int(src["resets"], f"{where}.resets", MAX_WRAPS)
    if attributed + src["unattributed_uj"] != src["measured_uj"]:
        raise _fail(where, f"energy not conserved for source {src['source']!r}: jobs "
                           f"{attributed} + unattributed {src['unattributed_uj']} != measured "
                           f"{src['measured_uj']} µJ")
    if src["component"] == "psys" and shares:
        raise _fail(where, "psys energy overlaps cpu/dram and is never attributed to jobs")
    if src["component"] == "bmc" and shares:
        raise _fail(where, BMC_NOT_ATTRIBUTED)
    raise _fail(where, "invalid")  # not reached: _source_ok and this agree


def _check_job(job: Any, where: str) -> None:
    if type(job) is dict and tuple(job) == JOB_FIELDS_SPLIT and job["step_uj"] is not None:
        step_uj = job["step_uj"]
        _dict(step_uj, f"{where}.step_uj", len(COMPONENTS))
        for component, parts in step_uj.items():
            if component not in COMPONENTS:
                raise _fail(f"{where}.step_uj", f"not a component: {component!r}")
            _dict(parts, f"{where}.step_uj.{component}", MAX_STEPS_PER_JOB)
            for step, energy_uj in parts.items():
                _text(step, f"{where}.step_uj.{component}", MAX_STEP_NAME, 1)
                _int(energy_uj, f"{where}.step_uj.{component}.{step}", MAX_ENERGY_UJ)
    elif not (type(job) is dict and tuple(job) == JOB_FIELDS_SPLIT):
        _fields(job, JOB_FIELDS, where)
    _job_id(job["job_id"], f"{where}.job_id")
    _opt_int(job["uid"], f"{where}.uid", MAX_UID)
    _opt_int(job["cpus"], f"{where}.cpus", MAX_COUNT)
    _int(job["cpu_time_us"], f"{where}.cpu_time_us", MAX_ENERGY_UJ)
    _bool(job["ended"], f"{where}.ended")
    step_ids = job["step_ids"]
    _list(step_ids, f"{where}.step_ids", MAX_STEPS_PER_JOB)
    for step in step_ids:
        _text(step, f"{where}.step_ids", MAX_STEP_NAME)
    steps = job["step_cpu_us"]
    _dict(steps, f"{where}.step_cpu_us", MAX_STEPS_PER_JOB)
    for step, cpu_us in steps.items():
        _text(step, f"{where}.step_cpu_us", MAX_STEP_NAME, 1)
        _int(cpu_us, f"{where}.step_cpu_us.{step}", MAX_ENERGY_UJ)
    if OUTSIDE_STEP in steps:
        raise _fail(f"{where}.step_cpu_us", f"{OUTSIDE_STEP!r} is not a Slurm step")
    phase = job["phase"]
    if phase is not None and (type(phase) is not str or phase not in PHASES):
        raise _fail(f"{where}.phase", f"not one of {', '.join(PHASES)}: {phase!r}")
    _opt_text(job["model"], f"{where}.model", MAX_NAME)
    _opt_int(job["alive_us"], f"{where}.alive_us", MAX_ALIVE_US)
    raise _fail(where, "invalid")  # not reached: _job_ok and this agree


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, datetime):
        raise _fail(where, f"not a datetime: {value!r}")
    try:
        return check_time(value)
    except ValueError as err:
        raise _fail(where, str(err)) from err


def time_json(utc: datetime) -> str:
    """Return a UTC datetime as pydantic writes it: ``"2026-01-02T03:04:05[.ffffff]Z"``."""
    return f'"{utc.replace(tzinfo=None).isoformat()}Z"'


def float_json(value: float) -> str:
    """Return a finite float as pydantic writes it (module docstring)."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    power = int(exponent)
    if power == -5:  # decimal down to 1e-5 (Python's repr goes to 1e-4)
        sign = "-" if mantissa.startswith("-") else ""
        return f"{sign}0.0000{mantissa.lstrip('-').replace('.', '')}"
    return f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"


def _phase_json(rec: Any, where: str) -> str:
    """Check one ``PhaseRecord``'s fields and return its JSON."""
    _fields(rec, PHASE_FIELDS, where)
    _job_id(rec["job_id"], f"{where}.job_id")
    phase = rec["phase"]
    if type(phase) is not str or phase not in PHASES:
        raise _fail(f"{where}.phase", f"not one of {', '.join(PHASES)}: {phase!r}")
    _opt_text(rec["model"], f"{where}.model", MAX_NAME)
    start = _time(rec["start"], f"{where}.start")
    end = _time(rec["end"], f"{where}.end")
    _opt_int(rec["samples"], f"{where}.samples", MAX_COUNT)
    metrics = rec["metrics"]
    _dict(metrics, f"{where}.metrics", MAX_PHASE_ITEMS)
    values = []
    for key, value in metrics.items():
        _text(key, f"{where}.metrics", MAX_KEY)
        if type(value) is int:
            try:
                value = float(value)
            except OverflowError:
                value = math.inf
        if type(value) is not float or not math.isfinite(value):
            raise _fail(f"{where}.metrics.{key}", f"not a finite number: {value!r}")
        values.append(f"{_DUMPS(key)}:{float_json(value)}")
    tags = rec["tags"]
    _dict(tags, f"{where}.tags", MAX_PHASE_ITEMS)
    for key, value in tags.items():
        _text(key, f"{where}.tags", MAX_KEY)
        _text(value, f"{where}.tags.{key}", MAX_NAME)
    return (
        f'{{"job_id":{_DUMPS(rec["job_id"])},"phase":"{phase}","model":{_DUMPS(rec["model"])},'
        f'"start":{time_json(start)},"end":{time_json(end)},"samples":{_DUMPS(rec["samples"])},'
        f'"metrics":{{{",".join(values)}}},"tags":{_DUMPS(tags)}}}'
    )


def interval_json(fields: dict[str, Any]) -> str:
    """Check an interval's fields as the wire ``Interval`` does and return its JSON.

    Returns:
        What ``Interval.model_validate(fields).model_dump_json()`` returns.

    Raises:
        WireError: What the model would refuse (or coerce: a type the agent never makes).
    """
    _fields(fields, INTERVAL_FIELDS, "interval")
    start = _time(fields["start"], "start")
    end = _time(fields["end"], "end")
    sources, jobs, phases = fields["sources"], fields["jobs"], fields["phases"]
    _list(sources, "sources", MAX_SOURCES_PER_INTERVAL)
    _list(jobs, "jobs", MAX_JOBS_PER_SOURCE)
    _list(phases, "phases", MAX_JOBS_PER_SOURCE)
    ids: set[str] = set()
    for i, src in enumerate(sources):
        if not _source_ok(src, ids):
            _check_source(src, f"sources.{i}")
    for i, job in enumerate(jobs):
        if not _job_ok(job, ids):
            _check_job(job, f"jobs.{i}")
    phase_texts = [_phase_json(rec, f"phases.{i}") for i, rec in enumerate(phases)]
    # Interval._sane, with the same float arithmetic.
    duration_s = (end - start).total_seconds()
    if duration_s <= 0:
        raise WireError(f"interval end {end} is not after start {start}")
    if duration_s > MAX_INTERVAL_S:
        raise WireError(f"interval of {duration_s:.0f} s is longer than {MAX_INTERVAL_S} s")
    names = {src["source"] for src in sources}
    if len(names) != len(sources):
        raise WireError("a source is listed twice in one interval")
    limit_uj = int(duration_s * MAX_SOURCE_POWER_W * 1_000_000)
    for src in sources:
        if src["measured_uj"] > limit_uj:
            raise WireError(
                f"absurd energy for source {src['source']!r}: {src['measured_uj']} µJ in "
                f"{duration_s:.3f} s is above {MAX_SOURCE_POWER_W} W"
            )
    for job in jobs:
        step_uj = job.get("step_uj")
        if step_uj is not None:
            try:
                check_step_split(job["job_id"], step_uj, job["step_cpu_us"],
                                 job_energy_by_component(
                    ((src["component"], src["jobs_uj"]) for src in sources), job["job_id"]))
            except ValueError as err:
                raise WireError(str(err)) from err
    if any(len(job) > len(JOB_FIELDS) and job["step_uj"] is None for job in jobs):
        # step_uj None is left out, as the model leaves it out.
        jobs = [{k: v for k, v in job.items() if k != "step_uj" or v is not None}
                for job in jobs]
    return (
        f'{{"start":{time_json(start)},"end":{time_json(end)},"sources":{_DUMPS(sources)},'
        f'"jobs":{_DUMPS(jobs)},"phases":[{",".join(phase_texts)}]}}'
    )


def phase_json(fields: dict[str, Any]) -> str:
    """Check a phase record's fields as the wire ``PhaseRecord`` does and return its JSON.

    Raises:
        WireError: What the model would refuse.
    """
    return _phase_json(fields, "phase")
