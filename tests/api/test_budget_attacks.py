"""Hostile and extreme input to ``/api/v1/budgets``: every bad budget is a 4xx with the
reason, never a 5xx or a traceback, and nothing odd reaches the state file."""

from __future__ import annotations

from typing import Any

import pytest


def put(client: Any, **body: Any) -> Any:
    return client.put("/api/v1/budgets", json={"cluster": "c1", **body})


@pytest.mark.parametrize("start, end", [
    ("0001-01-01T00:00:00+01:00", "2027-01-01T00:00:00Z"),  # before year 1 in UTC
    ("2027-01-01T00:00:00Z", "9999-12-31T23:00:00-01:00"),  # after year 9999 in UTC
    ("0001-01-01T00:00:00Z", "0001-01-01T01:00:00+23:00"),
])
def test_ranges_past_the_calendar_are_422(client, start, end):
    r = put(client, scope="user", user="al", limit="1kWh", period="range", start=start,
            end=end)
    assert r.status_code == 422, r.text
    assert client.get("/api/v1/budgets").json() == []
