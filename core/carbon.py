"""kWh, PUE and CO2e: pure functions at the edge between µJ and what people read.

Facility energy and emissions are kept as integers next to the raw IT energy (µJ):
``facility_uj = round(it_uj × PUE)`` and ``co2e_ug = round(facility_uj × I / 3.6e6)`` with ``I``
in g CO2e/kWh (1 kWh = 3.6e12 µJ, 1 g = 1e6 µg). Rounding is exact (rational arithmetic on the
float's exact binary value), so recomputing from the same factors always gives the same integers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from jobenergy.core.split import split_over_periods
from jobenergy.core.units import UJ_PER_KWH

#: World average carbon intensity of electricity used when nothing better is known, g CO2e/kWh
#: (IEA Global Energy & CO2 Status Report 2019, as CodeCarbon uses it).
#: Always reported with ``carbon_intensity_fallback = true``.
WORLD_AVERAGE_G_PER_KWH = 475.0

#: µg CO2e per (µJ × g/kWh): 1e6 µg/g ÷ 3.6e12 µJ/kWh.
_UJ_G_PER_KWH_PER_UG = UJ_PER_KWH // 1_000_000  # 3_600_000

HOUR = timedelta(hours=1)


def energy_kwh(energy_uj: int) -> float:
    """Return ``energy_uj / 3.6e12`` (exact constant, one rounding)."""
    return energy_uj / UJ_PER_KWH


def facility_energy_kwh(it_energy_kwh: float, pue: float) -> float:
    """Return facility energy: ``E_facility = E_IT × PUE`` (PUE ≥ 1 by definition)."""
    if pue < 1.0:
        raise ValueError(f"PUE must be >= 1.0, got {pue}")
    return it_energy_kwh * pue


def co2e_kg(facility_kwh: float, carbon_intensity_g_per_kwh: float) -> float:
    """Return emissions: ``kg CO2e = E_facility[kWh] × intensity[g/kWh] / 1000``."""
    if carbon_intensity_g_per_kwh < 0:
        raise ValueError(f"carbon intensity must be >= 0, got {carbon_intensity_g_per_kwh}")
    return facility_kwh * carbon_intensity_g_per_kwh / 1000.0


def facility_uj(it_uj: int, pue: float) -> int:
    """Return facility energy in µJ: ``round(E_IT[µJ] × PUE)`` (exact rational rounding)."""
    if pue < 1.0:
        raise ValueError(f"PUE must be >= 1.0, got {pue}")
    return round(it_uj * Fraction(pue))


def co2e_ug(facility_energy_uj: int, carbon_intensity_g_per_kwh: float) -> int:
    """Return emissions in µg: ``round(E_facility[µJ] × I[g/kWh] / 3.6e6)``."""
    if carbon_intensity_g_per_kwh < 0:
        raise ValueError(f"carbon intensity must be >= 0, got {carbon_intensity_g_per_kwh}")
    return round(facility_energy_uj * Fraction(carbon_intensity_g_per_kwh) / _UJ_G_PER_KWH_PER_UG)


#: Aliases accepted in a mix, mapped to the names of CodeCarbon's per-source factors.
SOURCE_ALIASES = {
    "oil": "petroleum",
    "gas": "natural_gas",
    "hydro": "hydroelectricity",
    "bioenergy": "biofuel",
}


def mix_intensity_g_per_kwh(
    shares: Mapping[str, float], factors_g_per_kwh: Mapping[str, float]
) -> float:
    """Return the intensity of a generation mix, CodeCarbon's method.

    ``I = Σ_s share_s × factor_s / Σ_s share_s``: shares may be percentages or fractions (they
    are normalised). Example: 25 % coal (995), 35 % petroleum (816), 26 % natural gas (743) and
    14 % nuclear (29) give 731.59 g/kWh.

    Raises:
        ValueError: A source has no factor, a share is negative, or all shares are 0.
    """
    total = 0.0
    weighted = 0.0
    for name, share in shares.items():
        key = SOURCE_ALIASES.get(name.lower(), name.lower())
        if key not in factors_g_per_kwh:
            known = ", ".join(sorted(factors_g_per_kwh))
            raise ValueError(f"unknown energy source {name!r} in mix; known: {known}")
        if share < 0:
            raise ValueError(f"share of {name!r} must be >= 0, got {share}")
        total += share
        weighted += share * factors_g_per_kwh[key]
    if total <= 0:
        raise ValueError("a mix needs at least one share above 0")
    return weighted / total


def hour_floor(moment: datetime) -> datetime:
    """Return the start of the UTC hour holding ``moment``."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def split_over_hours(start: datetime, end: datetime, energy_uj: int) -> dict[datetime, int]:
    """Split an interval's energy over the UTC hours it overlaps, by overlap (exact µJ).

    Energy is assumed uniform within the interval; the parts add up to ``energy_uj`` exactly
    (largest remainder over the overlap in µs: :func:`jobenergy.core.split.split_over_periods`).
    """
    return split_over_periods(start, end, energy_uj, HOUR)


def step_mean(
    points: Iterable[tuple[datetime, datetime, float]], start: datetime, end: datetime
) -> tuple[float, float]:
    """Return ``(covered_s, Σ value × overlap_s)`` of step values over ``[start, end)``.

    Each point holds its value over ``[point_start, point_end)``; the caller fills the
    uncovered rest with its base value and divides by the window length (a time-weighted mean).
    """
    covered = 0.0
    weighted = 0.0
    for p_start, p_end, value in points:
        lo, hi = max(start, p_start), min(end, p_end)
        if hi > lo:
            seconds = (hi - lo).total_seconds()
            covered += seconds
            weighted += seconds * value
    return covered, weighted
