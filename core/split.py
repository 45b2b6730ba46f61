"""Exact integer splits: the basis of energy conservation (DESIGN.md decision 2)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def split_uj(total_uj: int, weights: Mapping[K, int]) -> dict[K, int]:
    """Split ``total_uj`` in proportion to integer ``weights`` by largest remainder.

    Every key gets ``floor(total × w / W)``; the µJ left over go one each to the keys with the
    largest fractional remainders (ties broken by the order of ``weights``, so the result is
    deterministic). The parts always add up to ``total_uj`` exactly.

    Args:
        total_uj: Energy to split, µJ (>= 0).
        weights: Non-negative integer weight per key. Keys with weight 0 get 0.

    Returns:
        Energy per key, µJ, for every key of ``weights``.

    Raises:
        ValueError: If ``total_uj`` or a weight is negative, or all weights are 0 while
            ``total_uj`` is not (energy would be lost).
    """
    if total_uj < 0:
        raise ValueError(f"total_uj must be >= 0, got {total_uj}")
    weight_sum = 0
    for key, w in weights.items():
        if w < 0:
            raise ValueError(f"weight for {key!r} must be >= 0, got {w}")
        weight_sum += w
    if weight_sum == 0:
        if total_uj:
            raise ValueError("cannot split energy over zero total weight")
        return {key: 0 for key in weights}
    parts: dict[K, int] = {}
    remainders: list[tuple[int, int, K]] = []
    given = 0
    for order, (key, w) in enumerate(weights.items()):
        q, r = divmod(total_uj * w, weight_sum)
        parts[key] = q
        given += q
        if w:
            remainders.append((-r, order, key))
    left = total_uj - given
    remainders.sort()
    for _, _, key in remainders[:left]:
        parts[key] += 1
    return parts


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def period_floor(moment: datetime, period: timedelta) -> datetime:
    """Return the start of the ``period``-wide UTC slot holding ``moment`` (slots aligned to
    the epoch: whole minutes, whole hours)."""
    moment = moment.astimezone(UTC)
    return moment - (moment - _EPOCH) % period


def split_over_periods(start: datetime, end: datetime, energy_uj: int,
                       period: timedelta) -> dict[datetime, int]:
    """Split an interval's energy over the epoch-aligned ``period`` slots it overlaps.

    Energy is taken as uniform within ``[start, end)``: each slot's weight is its overlap in
    µs, and :func:`split_uj` makes the parts add up to ``energy_uj`` exactly. The one split of
    time for every resolution kept (hours at ingest, minutes at retention), so that a job's
    minutes add up to its hours and its totals.

    Returns:
        Energy per slot start (UTC), µJ; one slot when the interval lies inside it.
    """
    first = period_floor(start, period)
    if end <= first + period:
        return {first: energy_uj}
    weights: dict[datetime, int] = {}
    slot = first
    while slot < end:
        weights[slot] = (min(end, slot + period) - max(start, slot)) // _US
        slot += period
    return split_uj(energy_uj, weights)
