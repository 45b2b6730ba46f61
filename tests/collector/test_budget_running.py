"""Budgets enforced on running jobs: the answer to a batch names what its node's agent must do
(``collector/budget_running.py``), from the usage the server's budget loop last computed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobenergy.collector.budget_running import WARN_PPM, RunningBudgets, hot_budgets
from jobenergy.collector.budget_writer import refresh_once

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CPU = (("cpu", "package-0"),)
RANGE = {"period": "range", "start": "2020-01-01T00:00:00Z", "end": "2040-01-01T00:00:00Z"}
# job id -> (user, account, node): each gets a little over 1 kWh of IT energy (PUE 1).
JOBS = {"1": ("alice", "physics", "n1"), "2": ("bob", "physics", "n1"),
        "3": ("alice", "chem", "n2")}


@pytest.fixture
def seeded(client: Any, make_batch: Any) -> Any:
    for job_id, (user, account, node) in JOBS.items():
        r = client.post("/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": T0.isoformat(),
            "user": user, "account": account})
        assert r.status_code == 200, r.text
        batch = make_batch(node=node, seq=int(job_id), jobs={job_id: 1}, unattributed_weight=0,
                           sources=CPU, power_w=1000.0, interval_s=3600.0, n_intervals=1,
                           start=T0 - timedelta(hours=int(job_id)))  # one node: no overlap
        r = client.post("/api/v1/batches", content=batch.model_dump_json())
        assert r.status_code == 200, r.text
        assert r.json()["budget_actions"] == []  # no budget yet
    return client


def put(client: Any, **body: Any) -> dict[str, Any]:
    r = client.put("/api/v1/budgets", json={"cluster": "c1", **RANGE, **body})
    assert r.status_code == 200, r.text
    return r.json()["budget"]


def refresh(client: Any) -> None:
    """What the server's budget loop does every budget_state_interval_s, now."""
    app = client.app
    refresh_once(app.state.engine, app.state.running_budgets, None, None)


def push(client: Any, make_batch: Any, node: str, jobs: dict[str, int], seq: int = 100,
         ) -> list[dict[str, Any]]:
    """Post a short later batch of ``node`` with ``jobs``; return its budget actions."""
    batch = make_batch(node=node, seq=seq, jobs=jobs, sources=CPU, n_intervals=1,
                       start=T0 + timedelta(minutes=seq))
    r = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"duplicate", "records", "budget_actions", "accepts"}
    return body["budget_actions"]


def used_of(client: Any, budget_id: int) -> int:
    r = client.get("/api/v1/budgets")
    return next(b["used_inner"] for b in r.json() if b["id"] == budget_id)


def test_a_user_budget_at_95_percent_warns_that_users_jobs_only(seeded, make_batch):
    budget = put(seeded, scope="user", user="alice", limit="2.1kWh", running_policy="warn")
    refresh(seeded)
    used = used_of(seeded, budget["id"])
    assert 0.9 < used / budget["limit_uj"] < 1.0
    assert push(seeded, make_batch, "n1", {"1": 1, "2": 1}) == [{
        "job_id": "1", "action": "warn", "budget_id": budget["id"], "used_inner": used,
        "limit_inner": budget["limit_uj"], "unit": "kwh"}]  # bob's job 2: nothing
    assert [a["job_id"] for a in push(seeded, make_batch, "n2", {"3": 1})] == ["3"]
    # A repeated batch (the agent's retry) gets them too: the agent acts once anyway.
    assert [a["job_id"] for a in push(seeded, make_batch, "n2", {"3": 1})] == ["3"]


def test_at_100_percent_cancel_cancels_and_warn_says_exceeded(seeded, make_batch):
    put(seeded, scope="account", account="physics", limit="2kWh", running_policy="cancel")
    over = put(seeded, scope="account", account="chem", limit="1kWh", running_policy="warn")
    refresh(seeded)
    actions = push(seeded, make_batch, "n1", {"1": 1, "2": 1})
    assert [(a["job_id"], a["action"]) for a in actions] == [("1", "cancel"), ("2", "cancel")]
    assert [(a["action"], a["budget_id"]) for a in push(seeded, make_batch, "n2", {"3": 1})] \
        == [("exceeded", over["id"])]


def test_the_strongest_action_of_several_budgets_wins(seeded, make_batch):
    put(seeded, scope="user", user="alice", limit="2.1kWh", running_policy="warn")
    pair = put(seeded, scope="account_user", account="physics", user="alice", limit="1kWh",
               running_policy="cancel")
    refresh(seeded)
    assert [(a["job_id"], a["action"], a["budget_id"])
            for a in push(seeded, make_batch, "n1", {"1": 1})] == [("1", "cancel", pair["id"])]


def test_no_action_under_90_percent_without_a_running_policy_or_once_ended(
        seeded, make_batch):
    put(seeded, scope="user", user="alice", limit="1kWh", running_policy="none")
    put(seeded, scope="user", user="bob", limit="5kWh", running_policy="cancel")  # 20 %
    refresh(seeded)
    assert push(seeded, make_batch, "n1", {"1": 1, "2": 1}) == []
    put(seeded, scope="user", user="alice", limit="1kWh", running_policy="cancel")
    r = seeded.post("/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "3", "event": "end",
        "time": (T0 + timedelta(hours=3)).isoformat()})
    assert r.status_code == 200, r.text
    refresh(seeded)
    assert push(seeded, make_batch, "n2", {"3": 1}) == []  # ended: nothing to cancel
    # A job whose start event has not arrived has no user yet: no budget applies.
    assert [a["job_id"] for a in push(seeded, make_batch, "n1", {"1": 1, "9": 1}, seq=101)] \
        == ["1"]


def test_the_view_is_the_last_computed_never_recomputed_per_batch(seeded, make_batch):
    budget = put(seeded, scope="user", user="bob", limit="1.5kWh", running_policy="cancel")
    refresh(seeded)
    assert push(seeded, make_batch, "n1", {"2": 1}) == []  # 67 %
    # Bob's usage passes the limit in the database; the answers wait for the next refresh.
    batch = make_batch(node="n1", seq=200, jobs={"2": 1}, unattributed_weight=0, sources=CPU,
                       power_w=1000.0, interval_s=3600.0, n_intervals=1,
                       start=T0 + timedelta(hours=8))
    r = seeded.post("/api/v1/batches", content=batch.model_dump_json())
    assert r.status_code == 200 and r.json()["budget_actions"] == []
    refresh(seeded)
    assert [(a["action"], a["budget_id"]) for a in push(seeded, make_batch, "n1", {"2": 1},
                                                        seq=201)] == [("cancel", budget["id"])]


def test_an_older_refresh_never_replaces_a_newer_view():
    running = RunningBudgets()
    assert running.update([], started=2.0)
    assert not running.update([], started=1.0)
    assert running.hot("c1") == () and WARN_PPM == 900_000 and hot_budgets([]) == {}


def test_a_reused_job_id_does_not_spend_the_old_owners_budget(seeded, make_batch, caplog):
    """Slurm reuses job ids (MaxJobId wraps): alice's job 1 ended, synced; a later job 1 is
    bob's, but the row stays alice's. Its energy must not spend alice's budget, or her other
    running job (3) would be cancelled for bob's consumption."""
    end = T0 + timedelta(minutes=5)
    r = seeded.post("/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "1", "event": "end", "time": end.isoformat(),
        "state": "COMPLETED", "exit_code": 0, "source": "sacct", "user": "alice",
        "account": "physics"})
    assert r.status_code == 200, r.text
    budget = put(seeded, scope="user", user="alice", limit="2.5kWh", running_policy="cancel")
    refresh(seeded)
    before = used_of(seeded, budget["id"])
    # Bob's job 1, days later: its prolog's start (logged: the id was reused), then two
    # hours at 1 kW on n3 (alice's budget would be spent).
    r = seeded.post("/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "1", "event": "start",
        "time": (T0 + timedelta(days=3)).isoformat(), "user": "bob", "account": "physics"})
    assert r.status_code == 200, r.text
    assert "Slurm reused the id?" in caplog.text
    later = make_batch(node="n3", seq=7, jobs={"1": 1}, unattributed_weight=0, sources=CPU,
                       power_w=1000.0, interval_s=3600.0, n_intervals=2,
                       start=T0 + timedelta(days=3))
    assert seeded.post("/api/v1/batches", content=later.model_dump_json()).status_code == 200
    refresh(seeded)
    assert used_of(seeded, budget["id"]) == before
    assert push(seeded, make_batch, "n2", {"3": 1}) == []
