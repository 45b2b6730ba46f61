"""Every route that takes a database session closes it before its answer is built.

A route holding its pooled connection while the answer waits for a worker thread let a flood
of requests starve agents' batches (``tests/api/test_db_pool.py``); ``SessionsClosed``
prevents it. This walks the real app, so a route added later on a router without it fails.
"""

from __future__ import annotations

import inspect

import pytest
from fastapi.routing import APIRoute

from jobenergy.collector.routes import SessionsClosed, get_session


def _takes_session(dependant) -> bool:
    return any(dep.call is get_session or _takes_session(dep) for dep in dependant.dependencies)


def _api_routes(routes) -> list[APIRoute]:
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            found += _api_routes(included.routes)
        elif isinstance(route, APIRoute):
            found.append(route)
    return found


def test_every_route_with_a_session_closes_it_before_answering(client):
    routes = _api_routes(client.app.routes)
    with_session = [r for r in routes if _takes_session(r.dependant)]
    assert len(with_session) >= 15  # the walk finds them (nodes, clusters, budgets, series...)
    for route in with_session:
        assert isinstance(route, SessionsClosed), f"{route.path}: not a SessionsClosed route"
        assert not inspect.iscoroutinefunction(route.endpoint), route.path
        assert hasattr(route.endpoint, "__wrapped__"), f"{route.path}: endpoint not wrapped"


def test_a_streaming_endpoint_cannot_take_the_closing_route():
    def stream():
        yield b""

    with pytest.raises(TypeError, match="streaming endpoint"):
        SessionsClosed("/x", stream)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_takes_the_server_pool_settings_without_error(url):
    from jobenergy.collector.db import make_engine

    engine = make_engine(url, pool_size=15, pool_timeout=5.0)  # as create_app passes them
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


def test_a_sqlite_file_keeps_the_pool_settings(tmp_path):
    """Only an in-memory SQLite drops the pool options: a file's pool is sized and waits as
    told (here 2 connections and 0.2 s), not with SQLAlchemy's 5 and 30 s."""
    from sqlalchemy import exc as sa_exc

    from jobenergy.collector.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", pool_size=2, pool_timeout=0.2,
                         max_overflow=0)
    held = [engine.connect() for _ in range(2)]
    try:
        with pytest.raises(sa_exc.TimeoutError):
            engine.connect()
    finally:
        for conn in held:
            conn.close()
        engine.dispose()


def test_a_flood_of_health_checks_is_not_a_flood_of_queries(client):
    """/healthz needs no credentials: a successful ping answers for HEALTHZ_PING_S."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import event

    from jobenergy.api.app import HEALTHZ_PING_S

    pings: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.strip().upper() == "SELECT 1":
            pings.append(statement)

    event.listen(client.app.state.engine, "before_cursor_execute", count)
    begin = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get("/healthz"), range(64)))
    elapsed_s = time.monotonic() - begin
    assert [a.status_code for a in answers] == [200] * 64
    assert [a.json() for a in answers] == [{"status": "ok"}] * 64
    # One ping per HEALTHZ_PING_S at most, however many checks (64 before the cache).
    assert 1 <= len(pings) <= 1 + int(elapsed_s / HEALTHZ_PING_S), (len(pings), elapsed_s)
