"""Energy budgets: limits as integers, periods in UTC, projection at the current rate.

Pure functions; the collector sums usage (``collector/budget_usage.py``), the API and the
state file present it.

- **Units.** A budget is set in facility energy (``Wh``, ``kWh``, ``MWh``, ``GWh``) or in CO2e
  (``g``, ``kg``, ``t``, optionally suffixed ``CO2e``). Inside it is an integer: µJ
  (1 kWh = 3.6e12 µJ) or mg CO2e. Usage of a CO2e budget is summed from ``co2e_ug`` (µg), so
  comparisons are made in µJ or µg (``limit_inner``).
- **Periods** (UTC, whatever the site's time zone): ``day`` from 00:00 UTC, ``week`` from
  Monday 00:00 UTC (ISO weeks), ``month`` from the 1st at 00:00 UTC; each resets at the
  start of the next. ``range`` covers ``[start, end)`` once and never resets.
- **Projection**: used so far / elapsed time of the period × its length; an estimate at the
  current rate, not a forecast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from jobenergy.core.errors import JobEnergyError
from jobenergy.core.units import UJ_PER_KWH

UG_PER_MG = 1_000
MG_PER_KG = 1_000_000
UG_PER_KG = 1_000_000_000

#: Inner units of each budget unit: (limit's stored unit per display unit, usage per limit).
_ENERGY_UJ = {"wh": UJ_PER_KWH // 1000, "kwh": UJ_PER_KWH, "mwh": UJ_PER_KWH * 1000,
              "gwh": UJ_PER_KWH * 1_000_000}
_CO2E_MG = {"g": 1_000, "kg": MG_PER_KG, "t": MG_PER_KG * 1000}
_LIMIT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z0-9]+)\s*")
#: Largest limit stored (a signed 64-bit column).
_MAX_INNER = 2**63 - 1


class BudgetError(JobEnergyError, ValueError):
    """A budget's limit, period or range is invalid (the message says how).

    A ``ValueError`` too, so pydantic validators may let it through as a 422's reason.
    """


@dataclass(frozen=True)
class Limit:
    """A parsed limit: ``unit`` ``kwh`` with ``limit_uj``, or ``kg_co2e`` with ``limit_mg``."""

    unit: str
    limit_uj: int | None = None
    limit_mg: int | None = None


def parse_limit(text: str) -> Limit:
    """Parse ``2.5kWh``, ``800 MWh``, ``120kg``, ``3tCO2e`` into an integer limit.

    Exact decimal arithmetic, rounded to the nearest µJ / mg.

    Raises:
        BudgetError: Not a positive number followed by a known unit.
    """
    match = _LIMIT.fullmatch(text)
    units = "Wh, kWh, MWh, GWh (facility energy) or g, kg, t (CO2e, optionally 'kgCO2e')"
    if match is None:
        raise BudgetError(f"limit {text[:40]!r}: use a number and a unit: {units}")
    unit = match.group(2).lower()
    co2e = unit.removesuffix("co2e").removesuffix("co2")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as err:  # pragma: no cover - the pattern admits only numbers
        raise BudgetError(f"limit {text[:40]!r}: not a number") from err
    if unit in _ENERGY_UJ:
        inner, kind = number * _ENERGY_UJ[unit], "kwh"
    elif co2e in _CO2E_MG:
        inner, kind = number * _CO2E_MG[co2e], "kg_co2e"
    else:
        raise BudgetError(f"limit {text[:40]!r}: unknown unit {match.group(2)[:16]!r}: "
                          f"use {units}")
    value = int(inner.to_integral_value(rounding=ROUND_HALF_UP))
    if value <= 0 or value > _MAX_INNER:
        # 2^63-1 µJ is 2562 MWh; 2^63-1 mg is 9.2e9 t.
        raise BudgetError(f"limit {text[:40]!r}: must be above zero and at most "
                          f"{'2562 MWh' if kind == 'kwh' else '9.2e9 t'}")
    return Limit(kind, limit_uj=value) if kind == "kwh" else Limit(kind, limit_mg=value)


def limit_inner(unit: str, limit_uj: int | None, limit_mg: int | None) -> int:
    """Return the limit in the unit usage is summed in: facility µJ, or µg CO2e."""
    if unit == "kwh":
        assert limit_uj is not None
        return limit_uj
    assert limit_mg is not None
    return limit_mg * UG_PER_MG


def display(unit: str, inner: int) -> float:
    """Return an inner amount (µJ or µg) in the unit people read: kWh or kg CO2e."""
    return inner / (UJ_PER_KWH if unit == "kwh" else UG_PER_KG)


#: The unit's name on screen and in the state file.
UNIT_LABEL = {"kwh": "kWh", "kg_co2e": "kgCO2e"}


@dataclass(frozen=True)
class Window:
    """The period a budget is counted over now: ``[start, end)``, UTC.

    ``resets_at`` is ``end`` for recurring periods and None for a range (it never resets).
    """

    start: datetime
    end: datetime
    resets_at: datetime | None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def current_window(period: str, now: datetime, start_at: datetime | None = None,
                   end_at: datetime | None = None) -> Window:
    """Return the window of ``period`` containing ``now`` (a range's own bounds).

    Raises:
        BudgetError: Unknown period, or a range without bounds.
    """
    now = _utc(now)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return Window(midnight, midnight + timedelta(days=1), midnight + timedelta(days=1))
    if period == "week":
        start = midnight - timedelta(days=midnight.weekday())  # Monday (ISO week)
        return Window(start, start + timedelta(days=7), start + timedelta(days=7))
    if period == "month":
        start = midnight.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
            start.replace(month=start.month + 1)
        return Window(start, end, end)
    if period == "range":
        if start_at is None or end_at is None:
            raise BudgetError("a range budget needs a start and an end")
        return Window(_utc(start_at), _utc(end_at), None)
    raise BudgetError(f"period {period[:16]!r}: use day, week, month or range")


#: A range's bounds lie in [1970, 9999] UTC: the state file's unix seconds, and the calendar
#: every database and Lua's ``os.date`` handle.
RANGE_FIRST = datetime(1970, 1, 1, tzinfo=UTC)
RANGE_LAST = datetime(9999, 12, 31, tzinfo=UTC)


def check_range(start_at: datetime, end_at: datetime) -> tuple[datetime, datetime]:
    """Return a range's bounds in UTC, checked: whole hours (usage is kept per UTC hour),
    within [``RANGE_FIRST``, ``RANGE_LAST``].

    Raises:
        BudgetError: Not whole hours, outside those years, or the end not after the start.
    """
    try:
        start, end = _utc(start_at), _utc(end_at)
    except OverflowError as err:  # e.g. 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise BudgetError("range start and end must lie between 1970 and 9999 UTC") from err
    if not RANGE_FIRST <= start <= RANGE_LAST or not RANGE_FIRST <= end <= RANGE_LAST:
        raise BudgetError("range start and end must lie between 1970 and 9999 UTC")
    for name, moment in (("start", start), ("end", end)):
        if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
            raise BudgetError(f"range {name} {moment.isoformat()}: must be a whole UTC hour "
                              "(usage is counted per hour)")
    if end <= start:
        raise BudgetError("range end must be after its start")
    return start, end


def projected(used: int, window: Window, now: datetime) -> int | None:
    """Return usage at the end of ``window`` if it goes on at the rate so far.

    ``used × length / elapsed`` (integer division of exact microseconds); ``used`` itself
    once the window is over; None before it starts (no rate yet).
    """
    now = _utc(now)
    if now <= window.start:
        return None
    if now >= window.end:
        return used
    elapsed_us = (now - window.start) // timedelta(microseconds=1)
    length_us = (window.end - window.start) // timedelta(microseconds=1)
    return used * length_us // elapsed_us
