"""Energy units. Inside jobenergy energy is an integer number of microjoules (µJ).

kWh, joules-as-float and watts exist only at the API/CLI edge (DESIGN.md decision 1).
"""

from __future__ import annotations

from fractions import Fraction

#: 1 kWh = 1000 W × 3600 s = 3.6e6 J = 3.6e12 µJ, exactly.
UJ_PER_KWH: int = 3_600_000_000_000
UJ_PER_J: int = 1_000_000
UJ_PER_MJ: int = 1_000  # millijoule, NVML's unit


def mj_to_uj(energy_mj: int) -> int:
    """Convert NVML millijoules to microjoules (exact)."""
    return int(energy_mj) * UJ_PER_MJ


def uj_to_kwh(energy_uj: int) -> float:
    """Convert µJ to kWh for display; the division is the only rounding step."""
    return energy_uj / UJ_PER_KWH


def uj_to_kwh_exact(energy_uj: int) -> Fraction:
    """Convert µJ to kWh as an exact fraction (for tests and further exact arithmetic)."""
    return Fraction(energy_uj, UJ_PER_KWH)


def power_to_energy_uj(power_mw: int, interval_ns: int) -> int:
    """Integrate a constant power over an interval: mW × ns → µJ (rounded half down).

    1 mW × 1 ns = 1e-3 W × 1e-9 s = 1e-12 J = 1e-6 µJ.
    """
    return (int(power_mw) * int(interval_ns)) // 1_000_000
