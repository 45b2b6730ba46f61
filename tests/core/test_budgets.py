"""Budget limits, UTC periods and the projection (``core/budgets.py``), and the state file's
text and atomic write (``core/budget_state.py``)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobenergy.core.budget_state import StateEntry, render, write_atomic
from jobenergy.core.budgets import (
    BudgetError,
    check_range,
    current_window,
    parse_limit,
    projected,
)
from jobenergy.core.units import UJ_PER_KWH


@pytest.mark.parametrize("text, unit, inner", [
    ("2.5kWh", "kwh", 9_000_000_000_000), ("1 MWh", "kwh", 1000 * UJ_PER_KWH),
    ("500Wh", "kwh", UJ_PER_KWH // 2), ("120kg", "kg_co2e", 120_000_000),
    ("3tCO2e", "kg_co2e", 3_000_000_000), ("0.5kgCO2e", "kg_co2e", 500_000),
    ("1g", "kg_co2e", 1000),
])
def test_limits_are_exact_integers(text, unit, inner):
    limit = parse_limit(text)
    assert limit.unit == unit
    assert (limit.limit_uj if unit == "kwh" else limit.limit_mg) == inner


@pytest.mark.parametrize("text", ["2.5kW", "kWh", "-1kWh", "0kWh", "1e3kWh", "1 kWh extra",
                                  "99999999999GWh", ""])
def test_bad_limits_say_why(text):
    with pytest.raises(BudgetError, match="limit"):
        parse_limit(text)


def test_periods_are_utc_and_reset_at_the_next_one():
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)  # a Thursday
    day = current_window("day", now)
    assert (day.start, day.resets_at) == (datetime(2026, 12, 31, tzinfo=UTC),
                                          datetime(2027, 1, 1, tzinfo=UTC))
    week = current_window("week", now)
    assert (week.start, week.end) == (datetime(2026, 12, 28, tzinfo=UTC),
                                      datetime(2027, 1, 4, tzinfo=UTC))
    month = current_window("month", now)
    assert (month.start, month.end) == (datetime(2026, 12, 1, tzinfo=UTC),
                                        datetime(2027, 1, 1, tzinfo=UTC))
    other_zone = now.astimezone(ZoneInfo("Asia/Tokyo"))
    assert current_window("day", other_zone) == day  # 08:30 on Jan 1st in Tokyo: same UTC day
    fixed = current_window("range", now, datetime(2026, 1, 1, tzinfo=UTC),
                           datetime(2027, 1, 1, tzinfo=UTC))
    assert fixed.resets_at is None
    with pytest.raises(BudgetError):
        current_window("year", now)


def test_projection_is_used_over_elapsed_times_length():
    window = current_window("day", datetime(2026, 12, 3, 6, tzinfo=UTC))
    assert projected(100, window, datetime(2026, 12, 3, 6, tzinfo=UTC)) == 400  # 1/4 of a day
    assert projected(100, window, window.start) is None
    assert projected(100, window, window.end + timedelta(hours=1)) == 100


def test_ranges_are_whole_hours():
    start = datetime(2027, 1, 1, tzinfo=UTC)
    assert check_range(start, start + timedelta(hours=1)) == (start, start + timedelta(hours=1))
    with pytest.raises(BudgetError, match="whole UTC hour"):
        check_range(start + timedelta(minutes=5), start + timedelta(days=1))
    with pytest.raises(BudgetError, match="after"):
        check_range(start, start)


def _entry(**kw) -> StateEntry:
    values = {"id": 1, "scope": "user", "account": "", "user": "alice", "policy": "deny",
              "unit": "kwh", "period": "day", "used": 0, "limit": UJ_PER_KWH,
              "resets_at": 1_800_000_000, **kw}
    return StateEntry(**values)


def test_state_rounds_used_down_and_limit_up():
    # 1 µJ under the limit never reads as at the limit; 1 µJ over a limit rounds it up.
    text, problems = render([_entry(used=UJ_PER_KWH - 1, limit=UJ_PER_KWH + 1)], 5, {"alice": 7})
    assert problems == []
    assert text.splitlines() == [
        "# jobenergy budget state v1", "generated 5",
        "budget user - alice deny kWh 0.999999 1.000001 1800000000 1 day", "uid 7 alice"]
    co2e, _ = render([_entry(unit="kg_co2e", scope="account", user="", account="phys",
                             used=1_500_000_000, limit=2 * 10**9, resets_at=None)], 5, {})
    assert co2e.splitlines()[2] == "budget account phys - deny kgCO2e 1.500000 2.000000 - 1 day"


@pytest.mark.parametrize("name", ["a b", "a\nb", "a\tb", "-", "é", "a\x00", "x" * 65, "a\x85"])
def test_names_that_are_not_one_token_are_left_out(name):
    text, problems = render([_entry(user=name)], 5, {name: 1000})
    assert len(text.splitlines()) == 2 and len(problems) == 2


def test_write_is_atomic_0644_and_replaces_a_link_not_its_target(tmp_path):
    os.umask(0o077)
    target = tmp_path / "precious"
    target.write_text("keep")
    path = tmp_path / "budget.state"
    path.symlink_to(target)
    try:
        write_atomic(path, "new\n")
    finally:
        os.umask(0o022)
    assert target.read_text() == "keep"
    assert not path.is_symlink() and path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.state", "precious"]
