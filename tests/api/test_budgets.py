"""``/api/v1/budgets``: usage from the stored per-job hours (PUE and carbon as each job's),
who sees which budget, who may change them (audited), and input that could forge the state."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobenergy.core.carbon import hour_floor

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CPU = (("cpu", "package-0"),)
RANGE = {"period": "range", "start": "2026-11-23T00:00:00Z", "end": "2030-01-01T00:00:00Z"}
# job id -> (user, account, node, IT energy: power_w × 3600 s)
JOBS = {"1": ("nobody", "physics", "n1", 1000.0), "2": ("daemon", "physics", "n2", 2000.0),
        "3": ("nobody", "chem", "n3", 1000.0)}


def seed(client: Any, make_batch: Any, start: datetime = T0, interval_s: float = 3600.0) -> None:
    for job_id, (user, account, node, power_w) in JOBS.items():
        r = client.post("/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": start.isoformat(),
            "user": user, "account": account})
        assert r.status_code == 200, r.text
        batch = make_batch(node=node, jobs={job_id: 1}, unattributed_weight=0, sources=CPU,
                           power_w=power_w, interval_s=interval_s, n_intervals=1, start=start)
        r = client.post("/api/v1/batches", content=batch.model_dump_json())
        assert r.status_code == 200, r.text


def job(client: Any, job_id: str) -> dict[str, Any]:
    r = client.get(f"/api/v1/jobs/{job_id}", params={"cluster": "c1"})
    assert r.status_code == 200, r.text
    return r.json()


def put(client: Any, **body: Any) -> Any:
    return client.put("/api/v1/budgets", json={"cluster": "c1", **body})


def by_id(client: Any) -> dict[int, dict[str, Any]]:
    r = client.get("/api/v1/budgets")
    assert r.status_code == 200, r.text
    return {b["id"]: b for b in r.json()}


def test_usage_is_the_jobs_facility_energy_and_co2e(client, make_batch):
    seed(client, make_batch)
    assert client.put("/api/v1/clusters/c1/pue", json={"pue": 1.5}).status_code == 200
    assert client.put("/api/v1/clusters/c1/carbon",
                      json={"source": "constant", "g_per_kwh": 100}).status_code == 200
    jobs = {j: job(client, j) for j in JOBS}
    physics = put(client, scope="account", account="physics", limit="4kWh", **RANGE).json()
    nobody = put(client, scope="user", user="nobody", limit="2500Wh", **RANGE).json()
    pair = put(client, scope="account_user", account="physics", user="nobody",
               limit="0.1kg", submit_policy="warn", running_policy="cancel", **RANGE).json()
    assert physics["created"] and nobody["created"] and pair["created"]
    out = by_id(client)
    a, b, c = (out[x["budget"]["id"]] for x in (physics, nobody, pair))
    assert a["used_inner"] == jobs["1"]["facility_uj"] + jobs["2"]["facility_uj"]
    assert jobs["1"]["facility_uj"] == jobs["1"]["energy_uj"] * 3 // 2  # PUE-adjusted
    assert b["used_inner"] == jobs["1"]["facility_uj"] + jobs["3"]["facility_uj"]
    assert c["used_inner"] == jobs["1"]["co2e_ug"] and c["unit"] == "kgCO2e"
    assert a["limit_uj"] == 4 * 3_600_000_000_000 and c["limit_mg"] == 100_000
    assert a["over"] is True and a["remaining"] == 0.0  # 4.5 kWh of 4
    assert b["over"] is True and b["percent"] == pytest.approx(100 * 3.0 / 2.5)  # 3 of 2.5
    assert (c["submit_policy"], c["running_policy"]) == ("warn", "cancel")
    assert a["resets_at"] is None and a["period_end"] == "2030-01-01T00:00:00Z"
    assert "current rate" in a["projection_basis"]
    # Updating by key changes the limit of the same budget.
    again = put(client, scope="account", account="physics", limit="5kWh", **RANGE).json()
    assert (again["created"], again["budget"]["id"]) == (False, a["id"])
    assert again["budget"]["over"] is False


def test_a_day_budget_counts_today_and_resets_at_midnight_utc(client, make_batch, monkeypatch):
    now = datetime.now(UTC)

    class Frozen(datetime):  # the budget routes' clock: run just before midnight, the seeded
        @classmethod          # usage would otherwise fall in a day that is over
        def now(cls, tz=None):
            return now.astimezone(tz) if tz is not None else now.replace(tzinfo=None)

    from jobenergy.api import routes_budgets

    monkeypatch.setattr(routes_budgets, "datetime", Frozen)
    start = max(hour_floor(now), now - timedelta(seconds=20))
    seed(client, make_batch, start=start,
         interval_s=max((now - start).total_seconds(), 0.001))
    budget = put(client, scope="user", user="nobody", period="day", limit="1kWh").json()
    out = budget["budget"]
    assert out["used_inner"] == job(client, "1")["facility_uj"] + job(client, "3")["facility_uj"]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert out["period_start"] == midnight.isoformat().replace("+00:00", "Z")
    assert out["resets_at"] == (midnight + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert out["projection"] >= out["used"]
    week = put(client, scope="user", user="nobody", period="week", limit="1kWh").json()
    assert datetime.fromisoformat(week["budget"]["period_start"]).weekday() == 0


@pytest.mark.parametrize("body, reason", [
    ({"scope": "user", "user": "a b", "limit": "1kWh", "period": "day"}, "Slurm name"),
    ({"scope": "user", "user": "a\nbudget", "limit": "1kWh", "period": "day"}, "Slurm name"),
    ({"scope": "account", "account": "-", "limit": "1kWh", "period": "day"}, "Slurm name"),
    ({"scope": "user", "user": "al", "limit": "1kW", "period": "day"}, "unknown unit"),
    ({"scope": "user", "user": "al", "limit": "-1kWh", "period": "day"}, "number"),
    ({"scope": "user", "user": "al", "limit": "1kWh", "period": "year"}, "period"),
    ({"scope": "user", "account": "x", "limit": "1kWh", "period": "day"}, "user only"),
    ({"scope": "user", "user": "al", "limit": "1kWh", "period": "range",
      "start": "2027-01-01T00:30:00Z", "end": "2027-02-01T00:00:00Z"}, "whole UTC hour"),
    ({"scope": "user", "user": "al", "limit": "1kWh", "period": "day",
      "start": "2027-01-01T00:00:00Z"}, "range"),
])
def test_bad_budgets_are_422_with_the_reason_and_store_nothing(client, body, reason):
    r = put(client, **body)
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    assert client.get("/api/v1/budgets").json() == []


def test_unknown_budget_is_404(client):
    assert client.delete("/api/v1/budgets/99").status_code == 404
    r = put(client, id=99, scope="user", user="al", limit="1kWh", period="day")
    assert r.status_code == 404


# ---------------------------------------------------------------------------------------------
# Who sees and changes what (users are untrusted): Slurm JWTs for system users.

def _jwt(key: bytes, user: str) -> dict[str, str]:
    import time

    import jwt

    now = int(time.time())
    token = jwt.encode({"sun": user, "iat": now, "exp": now + 600}, key, algorithm="HS256")
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}


@pytest.fixture
def secured(db_url, tmp_path: Path, make_client, make_batch):
    """(client, headers of user) over JWT auth: admin ``bin``, users nobody and daemon, the
    data seeded through an unauthenticated server on the same database."""
    from jobenergy.collector.settings import ServerSettings

    base = {"db_url": db_url, "migrate": False, "pue": 1.0, "rate_limit_per_s": 0,
            "sacctmgr": ""}
    seeder = make_client(ServerSettings(auth="none", **base))
    seed(seeder, make_batch)
    for body in ({"scope": "account", "account": "physics"}, {"scope": "user", "user": "nobody"},
                 {"scope": "user", "user": "daemon"}, {"scope": "account", "account": "chem"},
                 {"scope": "account_user", "account": "physics", "user": "daemon"}):
        assert put(seeder, limit="1kWh", **RANGE, **body).status_code == 200
    key = os.urandom(32)
    (tmp_path / "jwt.key").write_bytes(key)
    client = make_client(ServerSettings(auth="jwt", jwt_key=tmp_path / "jwt.key",
                                        admins="bin", **base))
    return client, lambda user: _jwt(key, user)


def _seen(client: Any, headers: dict[str, str]) -> set[tuple[str, str, str]]:
    r = client.get("/api/v1/budgets", headers=headers)
    assert r.status_code == 200, r.text
    return {(b["scope"], b["account"] or "-", b["user"] or "-") for b in r.json()}


def test_users_see_only_the_budgets_that_apply_to_them(secured):
    client, who = secured
    assert _seen(client, who("nobody")) == {
        ("account", "physics", "-"), ("user", "-", "nobody"), ("account", "chem", "-")}
    assert _seen(client, who("daemon")) == {
        ("account", "physics", "-"), ("user", "-", "daemon"),
        ("account_user", "physics", "daemon")}
    assert len(_seen(client, who("bin"))) == 5  # admin
    assert client.get("/api/v1/budgets").status_code == 401


def test_users_may_not_change_budgets_nor_read_the_state(secured):
    client, who = secured
    body = {"cluster": "c1", "scope": "user", "user": "nobody", "limit": "1GWh",
            "period": "day"}
    r = client.put("/api/v1/budgets", json=body, headers=who("nobody"))
    assert r.status_code == 403 and "may not set budgets" in r.json()["detail"]
    assert client.delete("/api/v1/budgets/2", headers=who("nobody")).status_code == 403
    assert client.get("/api/v1/budgets/state", headers=who("nobody")).status_code == 403
    assert len(_seen(client, who("bin"))) == 5
    audit = client.get("/api/v1/audit", headers=who("bin")).json()
    assert not [e for e in audit if e["actor"].find("nobody") >= 0]


def test_admin_changes_are_audited_and_the_state_is_for_admins_and_slurm(secured):
    client, who = secured
    body = {"cluster": "c1", "scope": "user", "user": "nobody", "limit": "2kWh",
            "period": "month", "submit_policy": "warn"}
    r = client.put("/api/v1/budgets", json=body, headers=who("bin"))
    assert r.status_code == 200, r.text
    budget_id = r.json()["budget"]["id"]
    assert client.delete(f"/api/v1/budgets/{budget_id}", headers=who("bin")).status_code == 200
    audit = client.get("/api/v1/audit", headers=who("bin")).json()
    actions = [(e["action"], e["new_value"] and e["new_value"]["limit_uj"]) for e in audit
               if e["action"].startswith("budget.") and "bin" in e["actor"]]
    assert actions == [("budget.set", 2 * 3_600_000_000_000), ("budget.delete", None)]
    state = client.get("/api/v1/budgets/state", headers=who("root"))  # root: the Slurm side
    assert state.status_code == 200
    assert {b["scope"] for b in state.json()["budgets"]} == {"account", "user", "account_user"}
