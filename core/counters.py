"""Arithmetic on cumulative hardware energy counters.

RAPL's ``energy_uj`` counts up to ``max_energy_range_uj`` and then starts again from zero
(Documentation/power/powercap/powercap.rst). NVML's total energy counter (mJ since the
driver loaded) never wraps in practice but restarts from zero when the driver reloads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """Energy between two readings of one counter.

    Attributes:
        energy_uj: Energy consumed between the readings, µJ (never negative).
        wrapped: The counter passed ``max_energy_range_uj`` and restarted once.
        reset: The counter went backwards without a known range (driver reload, reboot):
            only the energy since the reset (the new reading) is counted.
    """

    energy_uj: int
    wrapped: bool = False
    reset: bool = False


def counter_delta(prev_uj: int, cur_uj: int, max_range_uj: int | None = None) -> CounterDelta:
    """Return the energy between two cumulative readings.

    Args:
        prev_uj: Earlier reading, µJ.
        cur_uj: Later reading, µJ.
        max_range_uj: The counter's range (RAPL ``max_energy_range_uj``), or None for a counter
            that does not wrap (NVML).

    A drop with a known range is a wrap: ``(max_range_uj - prev_uj) + cur_uj``. RAPL counts
    from 0 to ``max_energy_range_uj`` inclusive, as the kernel and Kepler treat it. A drop
    without a range, or a reading above the range, is a reset: the energy since the reset is
    ``cur_uj``.
    """
    if cur_uj >= prev_uj:
        return CounterDelta(cur_uj - prev_uj)
    if max_range_uj is not None and 0 <= prev_uj <= max_range_uj:
        return CounterDelta((max_range_uj - prev_uj) + cur_uj, wrapped=True)
    return CounterDelta(cur_uj, reset=True)
