"""Hostile and extreme input to ``/api/v1/budgets`` and the budget state: every bad budget is
a 4xx with the reason, never a 5xx or a traceback, and nothing odd reaches the state file."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobenergy.collector.budget_usage import matches
from jobenergy.core.budget_state import StateEntry, write_state
from jobenergy.core.budgets import BudgetError, parse_limit


def put(client: Any, **body: Any) -> Any:
    return client.put("/api/v1/budgets", json={"cluster": "c1", **body})


@pytest.mark.parametrize("start, end", [
    ("0001-01-01T00:00:00+01:00", "2027-01-01T00:00:00Z"),  # year 0 in UTC: OverflowError
    ("2027-01-01T00:00:00Z", "9999-12-31T23:00:00-01:00"),  # year 10000 in UTC
    ("0001-01-01T00:00:00Z", "0001-01-01T01:00:00+23:00"),
    ("1969-12-31T23:00:00Z", "1970-01-01T01:00:00Z"),  # before the state file's epoch
])
def test_ranges_past_the_calendar_are_422_not_500(client, start, end):
    r = put(client, scope="user", user="al", limit="1kWh", period="range", start=start,
            end=end)
    assert r.status_code == 422, r.text
    assert "between 1970 and 9999" in r.json()["detail"]
    assert client.get("/api/v1/budgets").json() == []


def test_the_widest_range_is_stored_and_read_back(client):
    r = put(client, scope="user", user="al", limit="1kWh", period="range",
            start="1970-01-01T00:00:00Z", end="9999-12-31T00:00:00Z")
    assert r.status_code == 200, r.text
    (out,) = client.get("/api/v1/budgets").json()
    assert out["period_end"] == "9999-12-31T00:00:00Z" and out["active"] is True
    state = client.get("/api/v1/budgets/state").json()
    assert state["budgets"][0]["resets_at"] == int(datetime(9999, 12, 31, tzinfo=UTC)
                                                   .timestamp())


@pytest.mark.parametrize("limit", ["1e999kWh", "NaN kWh", "inf kWh", "0x10kWh",
                                   "9" * 60 + "kWh", "0.0000000001Wh", "2563MWh",
                                   "\uff11kWh", "1 k\uff37h", "1kWhCO2e", "-0kWh"])
def test_hostile_limits_are_422(client, limit):
    r = put(client, scope="user", user="al", limit=limit, period="day")
    assert r.status_code == 422, r.text
    assert client.get("/api/v1/budgets").json() == []


def test_the_limits_bound_is_the_one_the_message_names():
    assert parse_limit("2562MWh").limit_uj == 2562 * 3_600_000_000_000_000
    with pytest.raises(BudgetError, match="at most 2562 MWh"):
        parse_limit("2563MWh")


def test_accounts_match_without_regard_to_case_as_in_slurm():
    budget = {"scope": "account", "account": "physics", "user": ""}
    assert matches(budget, "bob", "PHYSICS") and matches(budget, "bob", "physics")
    assert not matches(budget, "bob", None) and not matches(budget, "bob", "chem")
    pair = {"scope": "account_user", "account": "Physics", "user": "bob"}
    assert matches(pair, "bob", "physics") and not matches(pair, "BOB", "physics")


def test_the_state_writer_replaces_a_link_never_writes_through_it(tmp_path: Path):
    """Whoever can put a link at the state file's path (a careless folder) gets it replaced:
    the file it points to is left alone, and the new file is 0644 whatever the umask."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "budget.state"
    path.symlink_to(victim)
    old = os.umask(0o077)
    try:
        write_state(path, [StateEntry(1, "user", "", "al", "deny", "kwh", "day", 0, 1, None)],
                    1_800_000_000)
    finally:
        os.umask(old)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text().startswith("# jobenergy budget state")
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
