"""BMC windows read back from stored intervals, for tests of conservation (agent/reconcile.py).

The agent emits a window's ``bmc`` and ``other`` records on the sampled interval where the
window closes, and that interval's own measured energy belongs to the window too; the
interval that first carries ``bmc`` records took the BMC's baseline (what was measured up to
it is never compared). With ``store_interval_s == interval_s`` (nothing merged) the stored
intervals are the sampled ones, so every window can be rebuilt from them and checked:
``measured + other == bmc``, or ``other == 0`` where flagged.

A window whose BMC energy is 0 (a BMC reading 0 W) cannot be told from an interval where no
window closed: its measured energy is then counted with the next window, which is only
exact when it is 0 too (a 0 W BMC beside measured energy is flagged, and seen).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MEASURED_COMPONENTS = ("cpu", "dram", "gpu")


@dataclass(frozen=True, slots=True)
class Window:
    """One BMC window: the counters' energy in it, the BMC's, and ``other`` (µJ)."""

    measured_uj: int
    bmc_uj: int
    other_uj: int
    flagged: bool


@dataclass(frozen=True, slots=True)
class Windows:
    """The closed windows, and what was measured outside any (before the BMC's baseline,
    after the last window closed)."""

    closed: list[Window]
    before_uj: int
    after_uj: int


def windows(intervals: Iterable[Mapping[tuple[str, str], int]]) -> Windows:
    """Rebuild the BMC windows from intervals in time order.

    Args:
        intervals: Per stored interval, ``(component, source) → measured µJ`` (the sum of
            its rows: each job's share and the node's).
    """
    closed: list[Window] = []
    before_uj = 0
    open_uj: int | None = None  # None until the baseline interval
    for interval in intervals:
        measured_uj = sum(uj for (component, _), uj in interval.items()
                          if component in MEASURED_COMPONENTS)
        bmc = {source: uj for (component, source), uj in interval.items() if component == "bmc"}
        if open_uj is None:
            before_uj += measured_uj
            if bmc:
                open_uj = 0  # the baseline: the first window opens after this interval
            continue
        open_uj += measured_uj
        bmc_uj = sum(bmc.values())
        if bmc_uj:
            other_uj = sum(uj for (component, _), uj in interval.items() if component == "other")
            closed.append(Window(open_uj, bmc_uj, other_uj, "bmc/flagged" in bmc))
            open_uj = 0
    return Windows(closed, before_uj, open_uj or 0)
