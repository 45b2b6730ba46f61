"""What a BMC answers, checked where it enters: one wall-power reading of the whole node.

A BMC is a small computer on the network with its own firmware: its answers are input, not
truth. Every figure is checked here (finite, not negative, below ``MAX_BMC_POWER_W``) before
anything adds it up; a bad one is a :class:`BmcError` (a failed read), never energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol

from jobenergy.core.errors import SensorError
from jobenergy.core.limits import MAX_SOURCE_POWER_W
from jobenergy.core.units import UJ_PER_KWH

#: A node above this is a corrupt answer (the wire's bound on one source's average power).
MAX_BMC_POWER_W = MAX_SOURCE_POWER_W
#: A BMC energy counter above this (kWh) is corrupt: 10⁹ kWh is 114 years at 1 MW.
MAX_BMC_ENERGY_KWH = 10**9


class BmcError(SensorError):
    """The BMC did not answer, or answered something that is not a reading."""


@dataclass(frozen=True, slots=True)
class BmcReading:
    """One answer of a BMC.

    Attributes:
        power_w: The node's instantaneous wall power, W (None when not reported).
        energy_uj: The BMC's own cumulative energy counter, µJ (Redfish ``EnergykWh``), or
            None when the BMC has none (the power is then integrated: estimated).
    """

    power_w: float | None
    energy_uj: int | None = None


class BmcSensor(Protocol):
    """A BMC reachable over one protocol."""

    name: str

    def read(self) -> BmcReading:
        """Return the BMC's reading now; raise :class:`BmcError` on any failure."""
        ...


def checked_watts(value: object, what: str) -> float:
    """Return ``value`` as watts when it is a finite number in [0, ``MAX_BMC_POWER_W``].

    Raises:
        BmcError: Not a number (bools, strings and null included), NaN, infinite, negative or
            absurdly large.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BmcError(f"{what}: not a number: {str(value)[:40]!r}")
    try:
        watts = float(value)
    except OverflowError as err:  # a JSON integer beyond a double (300+ digits)
        raise BmcError(f"{what}: {str(value)[:20]}... W is not a power") from err
    if not math.isfinite(watts) or not 0 <= watts <= MAX_BMC_POWER_W:
        raise BmcError(f"{what}: {watts!r} W is not between 0 and {MAX_BMC_POWER_W} W")
    return watts


def checked_kwh_uj(value: object, what: str) -> int:
    """Return an energy counter in kWh as integer µJ (exact from its decimal text).

    Raises:
        BmcError: Not a finite number in [0, ``MAX_BMC_ENERGY_KWH``].
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BmcError(f"{what}: not a number: {str(value)[:40]!r}")
    try:
        kwh = Decimal(repr(value))  # the JSON text's digits, not the binary float's
    except InvalidOperation as err:
        raise BmcError(f"{what}: not a number: {value!r}") from err
    if not kwh.is_finite() or not 0 <= kwh <= MAX_BMC_ENERGY_KWH:
        raise BmcError(f"{what}: {value!r} kWh is not between 0 and {MAX_BMC_ENERGY_KWH}")
    return int(kwh * UJ_PER_KWH)
