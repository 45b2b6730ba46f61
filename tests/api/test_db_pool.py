"""The server's PostgreSQL connections: a fixed pool (``db_pool_size``), never one per request.

SQLAlchemy's default pool opens up to ten more connections under load and closes each on
return, so a busy collector made PostgreSQL start a backend for most batches. These tests count
the connections the app's engine opens (its ``connect`` event) while concurrent batches arrive.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

T0 = datetime(2026, 3, 1, tzinfo=UTC)
pytestmark = [pytest.mark.postgres,
              pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]


def test_concurrent_batches_share_the_kept_connections(server_settings, make_client,
                                                       make_batch):
    settings = server_settings.model_copy(update={"db_pool_size": 3, "rollup_interval_s": 0.0})
    client = make_client(settings)
    engine = client.app.state.engine
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    before = engine.pool.checkedin()  # opened at start (partitions, defaults, budgets)
    nodes = 8
    for seq in range(3):  # rounds: a pool that closes what it opened reopens every round
        batches = [make_batch(jobs={f"{100 + n}": 1}, node=f"n{n}", seq=seq, n_intervals=2,
                              start=T0 + timedelta(minutes=seq)) for n in range(nodes)]
        with ThreadPoolExecutor(nodes) as pool:
            answers = list(pool.map(lambda b: client.post(
                "/api/v1/batches", content=b.model_dump_json()), batches))
        assert [a.status_code for a in answers] == [200] * nodes, [a.text for a in answers]
        assert all(not a.json()["duplicate"] for a in answers)
    # At most db_pool_size connections ever: the ones kept before, and the rest opened once.
    assert before + len(opened) <= 3, (before, len(opened))
    jobs = client.get("/api/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert len(jobs) == nodes


def test_a_request_beyond_the_pool_waits_then_gets_503(server_settings, make_client,
                                                         make_batch):
    settings = server_settings.model_copy(update={
        "db_pool_size": 2, "db_ingest_pool_size": 1, "db_pool_timeout_s": 0.5,
        "rollup_interval_s": 0.0})
    client = make_client(settings)
    batch = make_batch(jobs={"7": 1}, n_intervals=2)
    # Reads beyond the read pool, batches beyond ingest's: each waits, then 503.
    for engine, send in ((client.app.state.engine, lambda: client.get("/api/v1/nodes")),
                         (client.app.state.ingest_engine, lambda: client.post(
                             "/api/v1/batches", content=batch.model_dump_json()))):
        size = engine.pool.size()
        held = [engine.connect() for _ in range(size)]  # every connection of that pool
        try:
            answer = send()
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"]
        finally:
            for conn in held:
                conn.close()
        assert send().status_code == 200



@pytest.mark.parametrize("path", ["/healthz", "/api/v1/nodes"])
def test_a_flood_of_reads_holds_no_connection_while_it_waits_for_a_thread(
        server_settings, make_client, make_batch, path):
    """A flood of health checks (no credentials) or of reads never costs an agent its batch:
    no request keeps a connection while its answer waits for a worker thread."""
    import anyio.to_thread

    settings = server_settings.model_copy(update={
        "db_pool_size": 2, "db_pool_timeout_s": 3.0, "rollup_interval_s": 0.0})
    client = make_client(settings)

    def few_threads() -> None:  # the server's worker threads, as 40 are under a bigger flood
        anyio.to_thread.current_default_thread_limiter().total_tokens = 3

    client.portal.call(few_threads)
    batch = make_batch(jobs={"7": 1}, n_intervals=2)
    with ThreadPoolExecutor(25) as pool:
        reads = [pool.submit(client.get, path) for _ in range(24)]
        stored = pool.submit(client.post, "/api/v1/batches", content=batch.model_dump_json())
        answers = [read.result() for read in reads]
        assert stored.result().status_code == 200, stored.result().text
    assert [a.status_code for a in answers] == [200] * len(answers)


def test_ingest_has_its_own_connections_and_threads(server_settings, make_client, make_batch):
    """Reads waiting for a connection on every shared worker thread hold no batch up: ingest
    is authenticated and stored on its own threads and connections (db_ingest_pool_size)."""
    import anyio.to_thread

    settings = server_settings.model_copy(update={
        "db_pool_size": 2, "db_ingest_pool_size": 1, "db_pool_timeout_s": 300.0,
        "rollup_interval_s": 0.0})
    client = make_client(settings)

    def shared_threads(total: int | None = None) -> int:
        limiter = anyio.to_thread.current_default_thread_limiter()
        if total is not None:
            limiter.total_tokens = total
        return int(limiter.borrowed_tokens)

    client.portal.call(shared_threads, 3)
    held = [client.app.state.engine.connect() for _ in range(2)]  # every read connection
    batch = make_batch(jobs={"7": 1}, n_intervals=2)
    with ThreadPoolExecutor(8) as pool:
        try:
            reads = [pool.submit(client.get, "/api/v1/nodes") for _ in range(6)]
            deadline = time.monotonic() + 60
            while client.portal.call(shared_threads) < 3:  # every shared thread waits
                assert time.monotonic() < deadline, "the reads never took the threads"
                time.sleep(0.01)
            stored = pool.submit(client.post, "/api/v1/batches",
                                 content=batch.model_dump_json())
            # The reads wait up to db_pool_timeout_s (300 s); the batch must not.
            answer = stored.result(timeout=120)
            assert answer.status_code == 200 and answer.json()["records"] > 0, answer.text
            assert not any(read.done() for read in reads)
            event = {"cluster": "c1", "job_id": "7", "event": "end",
                     "time": T0.isoformat(), "state": "COMPLETED"}
            ended = pool.submit(client.post, "/api/v1/jobs/events", json=event).result(120)
            assert ended.status_code == 200, ended.text
        finally:
            for conn in held:  # the reads go on (before the pool waits for them)
                conn.close()
    assert [read.result().status_code for read in reads] == [200] * len(reads)


def test_a_token_agent_is_authenticated_on_ingest_connections(server_settings, make_client,
                                                              make_batch, db_url):
    """An agent's token is looked up on ingest's own pool: with every read connection taken,
    its batch is still stored (it answered 503 after the pool timeout)."""
    from tests.api.test_auth import issue_token

    settings = server_settings.model_copy(update={
        "auth": "token", "db_pool_size": 2, "db_ingest_pool_size": 2, "db_pool_timeout_s": 1.5,
        "rollup_interval_s": 0.0})
    client = make_client(settings)
    agent = issue_token(db_url, "--node", "n1")
    batch = make_batch(node="n1", jobs={"7": 1}, n_intervals=2)
    headers = {"Authorization": f"Bearer {agent}", "Content-Type": "application/json"}
    held = [client.app.state.engine.connect() for _ in range(2)]  # every read connection
    try:
        answer = client.post("/api/v1/batches", content=batch.model_dump_json(),
                             headers=headers)
        assert answer.status_code == 200 and answer.json()["records"] > 0, answer.text
        # Another role's token on the batch path is refused (403), before ingest's threads.
        hooks = issue_token(db_url, "--role", "hooks")
        refused = client.post("/api/v1/batches", content=batch.model_dump_json(),
                              headers={**headers, "Authorization": f"Bearer {hooks}"})
        assert refused.status_code == 403, refused.text
    finally:
        for conn in held:
            conn.close()
