"""The bucket grid and the exact split of intervals over it (``api/power_series.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobenergy.api.power_series import (
    MAX_POINTS,
    NICE_STEPS_S,
    US_PER_S,
    BadStep,
    apportion,
    epoch_us,
    iso_z,
    make_grid,
    parse_step,
)
from jobenergy.core.split import split_uj

US_2100 = epoch_us(datetime(2100, 1, 1, tzinfo=UTC))


@settings(max_examples=400, derandomize=True, database=None)
@given(start=st.integers(0, US_2100), length=st.integers(1, 86_400 * US_PER_S),
       energy=st.integers(0, 4 * 10**15), step_s=st.sampled_from([1, 7, 10, 60, 300, 3600]))
def test_apportion_is_the_largest_remainder_split(start, length, energy, step_s):
    step = step_s * US_PER_S
    end = start + length
    weights = {}
    bucket = start // step
    while bucket * step < end:
        weights[bucket] = min(end, (bucket + 1) * step) - max(start, bucket * step)
        bucket += 1
    parts = apportion(start, end, energy, step)
    assert parts == list(split_uj(energy, weights).items())
    assert sum(p for _, p in parts) == energy


@settings(max_examples=400, derandomize=True, database=None)
@given(start=st.integers(0, US_2100 - 10**15), span=st.integers(0, 10**15),
       step=st.one_of(st.none(), st.integers(1, 366 * 86400)),
       hourly=st.booleans())
def test_grid_covers_the_window_in_at_most_max_points(start, span, step, hourly):
    grid = make_grid(start, start + span, step, 3600 if hourly else 1)
    assert 1 <= grid.count <= MAX_POINTS
    assert grid.start_s * US_PER_S <= start and start + span <= grid.end_s * US_PER_S
    assert grid.step_s % (3600 if hourly else 1) == 0
    if step is not None and not grid.step_raised:
        assert grid.step_s == step
    if step is None or grid.step_raised:
        # The smallest nice step that fits (past the list: whole days, or the request rounded
        # up to the multiple).
        smaller = [s for s in NICE_STEPS_S if s < grid.step_s and s >= (step or 1)
                   and s % (3600 if hourly else 1) == 0]
        for s in smaller:
            assert make_grid(start, start + span, s, 3600 if hourly else 1).step_s != s
        assert grid.step_s >= (step or 1)
        assert (grid.step_s in NICE_STEPS_S or grid.step_s % 86400 == 0
                or (step is not None and grid.step_s - step < (3600 if hourly else 1)))


def test_default_steps():
    day = 86400 * US_PER_S
    assert make_grid(0, 3600 * US_PER_S).step_s == 5  # a 1-h job: 720 buckets
    assert make_grid(0, day).step_s == 120
    assert make_grid(0, 3 * day).step_s == 300
    assert make_grid(0, 7 * day).step_s == 900
    assert make_grid(0, 30 * day).step_s == 3600
    assert make_grid(0, 10 * US_PER_S).step_s == 1
    grid = make_grid(0, day, 60)
    assert (grid.step_s, grid.step_raised, grid.requested_step_s) == (120, True, 60)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30), ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1w", 604800),
    (" 15 ", 15), (None, None), ("", None),
])
def test_parse_step(text, seconds):
    assert parse_step(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "5x", "m", "1h30m", "367d", "9" * 13])
def test_parse_step_refuses(text):
    with pytest.raises(BadStep):
        parse_step(text)


def test_epoch_and_iso():
    moment = datetime(2026, 11, 23, 10, 0, 0, 123_457, tzinfo=UTC)
    assert epoch_us(moment) == 1_795_428_000_123_457
    assert iso_z(1_795_428_000) == "2026-11-23T10:00:00Z"
