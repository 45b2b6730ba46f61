"""At most ``max_live_aggregates`` live leaderboards and summaries at once per server, and two
per user (``api/live_slots.py``): a user's burst of slow live aggregates cannot hold every
worker thread and database connection that ingest and the other users need."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import HTTPException

from jobenergy.api.live_slots import PER_USER, LiveSlots


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


def refused(slots: LiveSlots, user: str | None) -> HTTPException:
    with pytest.raises(HTTPException) as err, slots.hold(user):
        pass
    return err.value


def test_a_full_server_answers_503_with_retry_after() -> None:
    slots = LiveSlots(2, wait_s=0)
    with held(slots, "alice"), held(slots, "bob"):
        err = refused(slots, "carol")
        assert err.status_code == 503 and err.headers["Retry-After"]
        assert "2 live leaderboards or summaries" in err.detail
        err = refused(slots, None)  # services too
        assert err.status_code == 503
    with slots.hold("carol"):  # freed
        pass
    assert slots._per_user == {}


def test_a_user_has_at_most_two_running_or_waiting() -> None:
    slots = LiveSlots(PER_USER + 2, wait_s=0)
    with held(slots, "alice"), held(slots, "alice"):
        err = refused(slots, "alice")
        assert err.status_code == 429 and "alice already has 2" in err.detail
        with slots.hold("bob"):  # another user is not held back
            pass
        with slots.hold(None):  # nor a service
            pass
    with slots.hold("alice"):
        pass


def test_a_request_waits_for_a_slot_to_free() -> None:
    slots = LiveSlots(1, wait_s=60)
    waited = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with slots.hold("alice"):
            release.wait(timeout=60)

    thread = threading.Thread(target=holder)
    thread.start()

    def waiter() -> None:
        with slots.hold("bob"):
            waited.set()

    second = threading.Thread(target=waiter)
    while True:  # until the holder has its slot: the waiter then has to wait for it
        with slots._lock:
            if "alice" in slots._per_user:
                break
    assert not slots._free.acquire(blocking=False)
    second.start()
    release.set()
    assert waited.wait(timeout=60)
    thread.join(timeout=60)
    second.join(timeout=60)
    assert slots._per_user == {}


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
            assert answer.headers["retry-after"] == "10"
            assert "live leaderboards or summaries" in answer.json()["detail"]
        rolled = client.get("/api/v1/summary?group_by=user&source=rollup")
        assert rolled.status_code == 200 and rolled.json()[0]["source"] == "rollup"
        assert rolled.json()[0]["energy_kwh"] == live.json()[0]["energy_kwh"] > 0
        assert client.get("/api/v1/jobs/7").status_code == 200  # lookups are not held back
    assert client.get("/api/v1/summary?source=live").status_code == 200
