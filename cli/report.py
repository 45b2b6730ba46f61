"""sacct-shaped tables of job energy, from the API's job JSON.

Fields are chosen with ``-o`` like sacct's ``--format`` (case-insensitive; ``%N`` prints N
characters right-justified, ``%-N`` left-justified). Output is fixed-width with a dashed rule
by default, delimited (``|``, or ``--delimiter``) with ``--parsable2`` (``-P``), or with a
trailing delimiter with ``--parsable`` (``-p``), as sacct does. Text from users (job names,
tags) never reaches the terminal raw: control characters are escaped. ``NodeList`` is
compressed as Slurm prints it (``n[1-3]``, python-hostlist). ``JobID`` is sacct's (``1234_5``,
``1234+1``, ``1234.batch``), ``JobIDRaw`` the raw id; ``State`` says ``CANCELLED by <uid>``
when Slurm said who; ``ConsumedEnergy`` follows ``--units``/``--noconvert``. On a step row
(``senergy_rows.py``) the fields jobenergy does not know per step print empty.

Energy fields (CPUkWh, DRAMkWh, GPUkWh, OtherkWh, TotalkWh, EnergyUJ, FacilitykWh, CO2eKg) of a
job that no energy source covered (``quality.unmeasured``) read ``unmeasured``, never 0. In the
fixed-width table, the energy fields of a job whose energy is not final (``final`` false: still
running, or a node's agent has not reported past its end) end with ``*``; delimited output
keeps numbers plain: the ``Final`` field (``yes``/``no``) says it there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import hostlist

from jobenergy.core.text import printable
from jobenergy.core.units import UJ_PER_J, UJ_PER_KWH


def format_elapsed(seconds: float | None) -> str:
    """Format seconds as sacct's Elapsed: ``[D-]HH:MM:SS``."""
    if seconds is None:
        return ""
    total = int(round(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def format_time(value: str | None) -> str:
    """Format an API time as sacct does: local ``YYYY-MM-DDTHH:MM:SS`` (``Unknown`` if none)."""
    if not value:
        return "Unknown"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return printable(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the API's times are UTC
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


#: sacct's unit letters (``--units=[KMGTP]``), powers of 1000 for energy.
UNITS = "KMGTP"


def format_joules(value_uj: int | None, units: str | None = None, convert: bool = True) -> str:
    """Return energy in whole joules as sacct prints ConsumedEnergy (``convert_num_unit``):
    in the largest unit of 1000 that keeps it at least 1 (``12.35K``, ``2K``, ``870``), in
    ``units`` (``K``..``P``, sacct ``--units``) when given, plain with ``convert`` false
    (``--noconvert``)."""
    if value_uj is None:
        return ""
    joules = value_uj // UJ_PER_J
    if not convert and units is None:
        return str(joules)
    number, power = float(joules), 0
    if units is not None:
        power = UNITS.index(units.upper()) + 1
        number /= 1000**power
    else:
        while number >= 1000 and power < len(UNITS):
            number /= 1000
            power += 1
    suffix = UNITS[power - 1] if power else ""
    return (str(int(number)) if number == int(number) else f"{number:.2f}") + suffix


def _nodelist(job: dict[str, Any]) -> str:
    nodes = job.get("nodes") or sorted(job.get("by_node") or {})
    return hostlist.collect_hostlist([str(n) for n in nodes]) if nodes else ""


def _kwh(value_uj: int | None) -> str:
    return "" if value_uj is None else f"{value_uj / UJ_PER_KWH:.6f}"


def _energy(job: dict[str, Any]) -> int | None:
    """The row's energy in µJ; None when unknown (a step of a job without step data)."""
    value = job.get("energy_uj", 0)
    return None if value is None else int(value)


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Field:
    """One report column (``energy``: a job energy field, see the module docstring).

    ``steps``: meaningful on a step row (``JobID.batch``); the others print empty there, as
    sacct leaves the job-only fields of steps empty. ``units``: the getter also takes
    ``--units`` and whether to convert (``--noconvert``), bound by :func:`parse_fields`.
    """

    name: str
    width: int
    get: Callable[[dict[str, Any]], str]
    right: bool = True
    energy: bool = False
    steps: bool = False
    units: Callable[[dict[str, Any], str | None, bool], str] | None = None


UNMEASURED = "unmeasured"
NOT_FINAL_MARK = "*"


def is_unmeasured(job: dict[str, Any]) -> bool:
    """True when no energy source covered the job (its energy is unknown, not 0)."""
    return bool((job.get("quality") or {}).get("unmeasured"))


def is_final(job: dict[str, Any]) -> bool:
    """False only when the API says the job's energy is still arriving."""
    return job.get("final", True) is not False


def _final(job: dict[str, Any]) -> str:
    if "final" not in job:
        return ""
    return "yes" if job["final"] else "no"


def _component(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda job: "" if _energy(job) is None else _kwh(
        (job.get("by_component") or {}).get(name, 0))


def _state(job: dict[str, Any]) -> str:
    """State as sacct prints it: ``CANCELLED by <uid>`` when Slurm said who."""
    state = job.get("state") or ""
    if state.upper() == "CANCELLED" and job.get("kill_requid") is not None:
        return f"{state} by {job['kill_requid']}"
    return state


def _optional(value: Any) -> str:
    return "" if value is None else str(value)


FIELDS: dict[str, Field] = {
    f.name.lower(): f
    for f in (
        # JobID as sacct prints it (1234_5, 1234+1, 1234.batch); JobIDRaw the raw id.
        Field("JobID", 12, lambda j: str(j.get("sacct_job_id") or j["job_id"]), right=False,
              steps=True),
        Field("JobIDRaw", 12, lambda j: str(j["job_id"]), right=False, steps=True),
        Field("Cluster", 10, lambda j: j.get("cluster") or "", right=False, steps=True),
        Field("User", 9, lambda j: j.get("user") or "", right=False),
        Field("Account", 10, lambda j: j.get("account") or "", right=False, steps=True),
        Field("Partition", 10, lambda j: j.get("partition") or "", right=False),
        Field("JobName", 12, lambda j: j.get("name") or "", right=False, steps=True),
        Field("State", 10, _state, right=False),
        Field("Elapsed", 10, lambda j: format_elapsed(j.get("elapsed_s"))),
        Field("NodeList", 15, _nodelist, right=False),
        Field("NNodes", 8, lambda j: str(len(j.get("nodes") or j.get("by_node") or []))),
        Field("Start", 19, lambda j: format_time(j.get("start"))),
        Field("End", 19, lambda j: format_time(j.get("end"))),
        Field("ExitCode", 8, lambda j: j.get("exit_code") or "", right=False),
        Field("AllocTRES", 10, lambda j: j.get("alloc_tres") or "", right=False),
        Field("CPUkWh", 11, _component("cpu"), energy=True, steps=True),
        Field("DRAMkWh", 11, _component("dram"), energy=True, steps=True),
        Field("GPUkWh", 11, _component("gpu"), energy=True, steps=True),
        # The job's share of what its nodes' BMCs saw beyond cpu + dram + gpu (fans, NICs,
        # power supplies: agent/reconcile.py); 0 where no BMC reconciled it (quality says).
        Field("OtherkWh", 11, _component("other"), energy=True, steps=True),
        Field("TotalkWh", 11, lambda j: _kwh(_energy(j)), energy=True, steps=True),
        Field("EnergyUJ", 16, lambda j: _optional(_energy(j)), energy=True, steps=True),
        # sacct's own names, in joules: ConsumedEnergy with unit suffixes (--units,
        # --noconvert), Raw plain.
        Field("ConsumedEnergy", 14, lambda j: format_joules(_energy(j)), energy=True,
              steps=True, units=lambda j, units, convert: format_joules(_energy(j), units,
                                                                        convert)),
        Field("ConsumedEnergyRaw", 17,
              lambda j: "" if _energy(j) is None else str(_energy(j) // UJ_PER_J),
              energy=True, steps=True),
        Field("PUE", 5, lambda j: _num(j.get("pue"), 2)),
        Field("FacilitykWh", 11, lambda j: _num(j.get("facility_energy_kwh")), energy=True),
        Field("gCO2ekWh", 8, lambda j: _num(j.get("carbon_intensity_g_per_kwh"), 1)),
        Field("CO2eKg", 11, lambda j: _num(j.get("co2e_kg")), energy=True),
        Field("Model", 12, lambda j: j.get("model") or (j.get("tags") or {}).get("model", ""),
              right=False),
        Field("Phase", 9, lambda j: j.get("phase") or (j.get("tags") or {}).get("phase", ""),
              right=False),
        Field("Coverage", 8, lambda j: _num((j.get("quality") or {}).get("coverage"), 3)),
        Field("Final", 5, _final, right=False),
    )
}

DEFAULT_FIELDS = "JobID,User,Elapsed,CPUkWh,DRAMkWh,GPUkWh,TotalkWh,FacilitykWh,CO2eKg"


def parse_fields(spec: str, *, units: str | None = None, convert: bool = True) -> list[Field]:
    """Parse ``-o`` like sacct: ``JobID,User%20,JobName%-30,TotalkWh``; ``units`` and
    ``convert`` (``--units``, ``--noconvert``) go to the fields that take them.

    Raises:
        ValueError: A field name is unknown (the message lists the valid ones) or a width is
            not a number.
    """
    fields = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, percent, width = item.partition("%")
        base = FIELDS.get(name.lower())
        if base is None:
            valid = " ".join(f.name for f in FIELDS.values())
            raise ValueError(f"invalid field requested: {name!r}; valid fields: {valid}")
        if percent:
            digits = width[1:] if width.startswith("-") else width
            if not (digits.isascii() and digits.isdigit()) or not 0 < int(digits) <= 1024:
                raise ValueError(f"invalid width in {item!r}: use {name}%N or {name}%-N")
            # sacct: %N prints N characters right-justified, %-N left-justified.
            base = replace(base, width=int(digits), right=not width.startswith("-"))
        if base.units is not None:
            base = replace(base, get=partial(base.units, units=units, convert=convert))
        fields.append(base)
    return fields


def helpformat() -> str:
    """Return the field names, as ``sacct --helpformat`` lists them."""
    names = [f.name for f in FIELDS.values()]
    width = max(len(n) for n in names) + 1
    rows = [names[i:i + 4] for i in range(0, len(names), 4)]
    return "\n".join("".join(n.ljust(width) for n in row).rstrip() for row in rows)


def render(
    jobs: Iterable[dict[str, Any]],
    fields: list[Field],
    *,
    delimiter: str | None = None,
    trailing: bool = False,
    header: bool = True,
) -> str:
    """Render jobs as sacct does: fixed-width (``delimiter=None``) or delimited."""
    lines = []
    if delimiter is not None:
        end = delimiter if trailing else ""
        if header:
            lines.append(delimiter.join(f.name for f in fields) + end)
        for job in jobs:
            lines.append(delimiter.join(value(f, job, mark=False) for f in fields) + end)
        return "\n".join(lines)

    def cell(field: Field, text: str) -> str:
        text = text if len(text) <= field.width else text[: field.width - 1] + "+"
        return text.rjust(field.width) if field.right else text.ljust(field.width)

    if header:
        lines.append(" ".join(cell(f, f.name) for f in fields))
        lines.append(" ".join("-" * f.width for f in fields))
    for job in jobs:
        lines.append(" ".join(cell(f, value(f, job, mark=True)) for f in fields))
    return "\n".join(lines)


def value(field: Field, job: dict[str, Any], *, mark: bool) -> str:
    """A field's text for ``job``: ``unmeasured`` energy, ``*`` on energy not final (``mark``);
    control characters escaped; empty on a step row (``"step"`` set) for job-only fields."""
    if job.get("step") is not None and not field.steps:
        return ""
    if not field.energy:
        return printable(field.get(job))
    text = UNMEASURED if is_unmeasured(job) else field.get(job)
    return text + NOT_FINAL_MARK if mark and text and not is_final(job) else text


def footnotes(jobs: Iterable[dict[str, Any]], fields: list[Field], *, marked: bool) -> list[str]:
    """Lines for stderr explaining what the shown energy fields say (none: nothing to say)."""
    if not any(f.energy for f in fields):
        return []
    jobs = list(jobs)
    notes = []
    pending = sum(1 for job in jobs if not is_final(job))
    if pending:
        what = (f"{NOT_FINAL_MARK} energy not final" if marked
                else f"{pending} job(s) with energy not final (Final=no)")
        notes.append(f"{what}: still running, or energy of a node still arriving")
    if any(is_unmeasured(job) for job in jobs):
        notes.append(f"{UNMEASURED}: no energy counter (RAPL, NVML) covered the job")
    return notes


def _opt(key: str, digits: int = 6) -> Callable[[dict[str, Any]], str]:
    return lambda row: _num(row.get(key), digits)


LEADERBOARD_FIELDS: list[Field] = [
    Field("Model", 20, lambda r: r.get("model") or "", right=False),
    Field("Phase", 9, lambda r: r.get("phase") or "", right=False),
    Field("Jobs", 6, lambda r: str(r.get("jobs", ""))),
    Field("TotalkWh", 12, _opt("total_energy_kwh")),
    Field("MediankWh", 12, _opt("median_energy_kwh")),
    Field("kWhPerGPUh", 10, _opt("kwh_per_gpu_hour", 4)),
    Field("JPerSample", 10, _opt("j_per_sample", 3)),
    Field("CO2eKg", 10, _opt("co2e_kg")),
]

SUMMARY_FIELDS: list[Field] = [
    Field("Group", 16, lambda r: "" if r.get("group") is None else str(r["group"]), right=False),
    Field("Jobs", 7, lambda r: str(r.get("jobs", ""))),
    Field("TotalkWh", 12, _opt("energy_kwh")),
    Field("GPUkWh", 12, _opt("gpu_energy_kwh")),
    Field("FacilitykWh", 12, _opt("facility_energy_kwh")),
    Field("GPUHours", 10, _opt("gpu_hours", 2)),
    Field("CO2eKg", 10, _opt("co2e_kg")),
]
