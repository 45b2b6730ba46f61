from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobenergy.core.carbon import split_over_hours
from jobenergy.core.split import period_floor, split_over_periods, split_uj


@given(
    total=st.integers(min_value=0, max_value=10**15),
    weights=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 10**9), min_size=1),
)
def test_split_conserves_and_is_within_one_uj_of_exact_share(total, weights):
    if sum(weights.values()) == 0 and total:
        with pytest.raises(ValueError):
            split_uj(total, weights)
        return
    parts = split_uj(total, weights)
    assert sum(parts.values()) == total
    weight_sum = sum(weights.values()) or 1
    for key, w in weights.items():
        exact = Fraction(total * w, weight_sum)
        assert abs(parts[key] - exact) < 1
        if w == 0:
            assert parts[key] == 0


def test_largest_remainder_gives_leftover_to_largest_fractions():
    # 100 over weights 1:1:1 -> 33.33 each: one key gets the spare µJ, first in order on ties.
    assert split_uj(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    # 10 over 0.25/0.75 -> 2.5 / 7.5: tie on remainder .5, order decides.
    assert split_uj(10, {"x": 1, "y": 3}) == {"x": 3, "y": 7}


def test_negative_inputs_rejected():
    with pytest.raises(ValueError, match="total_uj"):
        split_uj(-1, {"a": 1})
    with pytest.raises(ValueError, match="weight"):
        split_uj(1, {"a": -1})


MINUTE = timedelta(minutes=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(
    start_us=st.integers(min_value=1_700_000_000_000_000, max_value=1_800_000_000_000_000),
    length_us=st.integers(min_value=1, max_value=86_400_000_000),
    energy_uj=st.integers(min_value=0, max_value=10**13),
    period_s=st.sampled_from([60, 3600]),
)
def test_split_over_periods_is_exact_and_proportional(start_us, length_us, energy_uj, period_s):
    """An interval crossing minute (or hour) edges: every slot it overlaps gets its share of
    the overlap within 1 µJ, the parts add up exactly, and the slots are aligned edges."""
    start = EPOCH + timedelta(microseconds=start_us)
    end = start + timedelta(microseconds=length_us)
    period = timedelta(seconds=period_s)
    parts = split_over_periods(start, end, energy_uj, period)
    assert sum(parts.values()) == energy_uj
    slots = sorted(parts)
    assert slots[0] == period_floor(start, period) <= start < slots[0] + period
    assert slots[-1] < end <= slots[-1] + period
    assert all(b - a == period for a, b in zip(slots, slots[1:], strict=False))
    for slot, part in parts.items():
        overlap = (min(end, slot + period) - max(start, slot)) // timedelta(microseconds=1)
        assert abs(part - Fraction(energy_uj * overlap, length_us)) < 1
    if period_s == 3600:  # ingest's hours are this same split
        assert split_over_hours(start, end, energy_uj) == parts


def test_split_over_minutes_examples():
    at = datetime(2025, 2, 28, 23, 59, 45, tzinfo=UTC)
    # 25 s over a minute edge: 15 s before, 10 s after.
    assert split_over_periods(at, at + timedelta(seconds=25), 1001, MINUTE) == {
        datetime(2025, 2, 28, 23, 59, tzinfo=UTC): 601,
        datetime(2025, 3, 1, 0, 0, tzinfo=UTC): 400}
    # Inside one minute: one slot, whatever the time zone of the input.
    local = datetime(2025, 3, 1, 2, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert split_over_periods(local, local + timedelta(seconds=10), 7, MINUTE) == {
        datetime(2025, 3, 1, 1, 0, tzinfo=UTC): 7}
