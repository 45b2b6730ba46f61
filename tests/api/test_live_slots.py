"""At most ``max_live_aggregates`` live leaderboards and summaries at once per server, and two
per user (``api/live_slots.py``): a user's burst of slow live aggregates cannot hold every
worker thread and database connection that ingest and the other users need."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import HTTPException

from jobenergy.api.live_slots import LiveSlots


@contextmanager
def held(slots: LiveSlots, user: str | None) -> Iterator[None]:
    """Hold a slot in another thread (as a running request does) until the block ends."""
    got, done = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with slots.hold(user):
                got.set()
                done.wait(timeout=60)
        except BaseException as err:  # noqa: BLE001 - reported to the test below
            failed.append(err)
            got.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert got.wait(timeout=60)
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=60)


def refused(slots: LiveSlots, user: str | None, materialised: bool = True) -> HTTPException:
    with pytest.raises(HTTPException) as err, slots.hold(user, materialised):
        pass
    return err.value


def waiting(slots: LiveSlots, user: str | None) -> tuple[threading.Thread, threading.Event]:
    """Start a request for a slot in another thread; return it and the event set once in."""
    got = threading.Event()

    def run() -> None:
        with slots.hold(user):
            got.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


def inside(slots: LiveSlots, n: int) -> None:
    """Wait until ``n`` requests are running or waiting (a condition, not a sleep)."""
    while True:
        with slots._lock:
            if slots._inside == n:
                return


def test_a_full_server_answers_503_with_retry_after() -> None:
    slots = LiveSlots(2, wait_s=0)
    with held(slots, "alice"), held(slots, "bob"):
        err = refused(slots, "carol")
        assert err.status_code == 503 and err.headers["Retry-After"] == "1"
        assert "2 live leaderboards or summaries" in err.detail
        assert "materialised" in err.detail
        assert "materialised" not in refused(slots, "carol", materialised=False).detail
        assert refused(slots, None).status_code == 503  # nodes and services too
    with slots.hold("carol"):  # freed
        pass
    assert slots._per_user == {} and slots._inside == 0


def test_as_many_may_wait_as_may_run_and_no_more() -> None:
    slots = LiveSlots(1, wait_s=60)
    with held(slots, "alice"):
        thread, got = waiting(slots, "bob")
        inside(slots, 2)  # alice's running, bob's waiting
        err = refused(slots, "carol")  # at once, not after wait_s
        assert err.status_code == 503 and "as many wait" in err.detail
        assert not got.is_set()
    assert got.wait(timeout=60)  # bob's gets alice's slot when it frees
    thread.join(timeout=60)
    assert slots._per_user == {} and slots._inside == 0


def test_a_person_computes_one_at_a_time_and_has_at_most_two() -> None:
    slots = LiveSlots(4, wait_s=60)
    with held(slots, "alice"):
        second, got = waiting(slots, "alice")
        inside(slots, 2)
        with slots.hold("bob"):  # others are not held back: slots are free
            pass
        err = refused(slots, "alice")
        assert err.status_code == 429 and "alice already has 2" in err.detail
        assert not got.is_set()  # alice's second waits for her first, though slots are free
    assert got.wait(timeout=60)
    second.join(timeout=60)
    with slots.hold("alice"):
        pass
    assert slots._per_user == {} and slots._inside == 0


def test_the_api_answers_503_when_full_and_the_materialised_board_takes_no_slot(
    server_settings, make_client, make_batch
) -> None:
    from sqlalchemy import create_engine

    from jobenergy.api.leaderboards import all_time_totals, window_totals
    from jobenergy.collector.rollups import refresh

    settings = server_settings.model_copy(
        update={"max_live_aggregates": 1, "live_aggregate_wait_s": 0.0,
                "rollup_interval_s": 0.0})  # materialised below, after the batch
    client = make_client(settings)
    batch = make_batch(jobs={"7": 1}, unattributed_weight=0, n_intervals=2)
    assert client.post("/api/v1/batches", content=batch.model_dump_json()).status_code == 200
    live = client.get("/api/v1/summary?group_by=user&source=live")
    assert live.status_code == 200 and live.json()[0]["source"] == "live"
    engine = create_engine(settings.db_url)
    try:
        assert refresh(engine, all_time_totals, window_totals=window_totals).windows
    finally:
        engine.dispose()

    slots: LiveSlots = client.app.state.live_slots
    with held(slots, None):
        for path in ("/api/v1/leaderboards/models?source=live",
                     "/api/v1/summary?group_by=user&source=live",
                     "/api/v1/leaderboards/models?start=2020-01-01"):
            answer = client.get(path)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"] == "1"  # live_aggregate_wait_s, at least 1
            assert "live leaderboards or summaries" in answer.json()["detail"]
        rolled = client.get("/api/v1/summary?group_by=user&source=rollup")
        assert rolled.status_code == 200 and rolled.json()[0]["source"] == "rollup"
        assert rolled.json()[0]["energy_kwh"] == live.json()[0]["energy_kwh"] > 0
        assert client.get("/api/v1/jobs/7").status_code == 200  # lookups are not held back
    assert client.get("/api/v1/summary?source=live").status_code == 200


def test_a_waiting_request_holds_no_database_connection(
    server_settings, make_client, make_batch
) -> None:
    """The routing (materialised or live) reads the database; its transaction ends before
    the wait, so waiters never take the connections ingest needs."""
    settings = server_settings.model_copy(
        update={"max_live_aggregates": 1, "live_aggregate_wait_s": 60.0,
                "rollup_interval_s": 0.0})
    client = make_client(settings)
    batch = make_batch(jobs={"7": 1}, unattributed_weight=0, n_intervals=2)
    assert client.post("/api/v1/batches", content=batch.model_dump_json()).status_code == 200
    slots: LiveSlots = client.app.state.live_slots
    pool = client.app.state.engine.pool
    answers: list = []
    with held(slots, None):
        # Never materialised: answered live, after asking rollup_state.
        thread = threading.Thread(target=lambda: answers.append(
            client.get("/api/v1/summary?group_by=user&source=rollup")))
        thread.start()
        inside(slots, 2)
        # 0 once the app's own background reads are done (the budget refresher reads at
        # start): a waiter holding a connection keeps it 1 until the slot frees.
        deadline = time.monotonic() + 10
        while pool.checkedout() != 0:
            assert time.monotonic() < deadline, f"{pool.checkedout()} connection(s) held"
            time.sleep(0.01)
        assert not answers
    thread.join(timeout=60)
    assert answers[0].status_code == 200 and answers[0].json()[0]["source"] == "live"
