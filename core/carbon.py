"""kWh, PUE and CO2e: pure functions at the edge between µJ and what people read."""

from __future__ import annotations

from jobenergy.core.units import UJ_PER_KWH

#: World average carbon intensity of electricity used when nothing better is known, g CO2e/kWh.
#: Always reported with ``carbon_intensity_fallback = true``.
WORLD_AVERAGE_G_PER_KWH = 475.0


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
