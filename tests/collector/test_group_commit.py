"""Group commit (collector/group_commit.py, ingest_group): several agents' batches in one
transaction store exactly what storing them one by one stores, and one bad batch costs the
others nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import Connection, inspect, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.collector import group_commit
from jobenergy.collector.clusters import apply_server_defaults
from jobenergy.collector.db import CONNECT_TIMEOUT_S, make_engine
from jobenergy.collector.group_commit import GroupWriter, WriterBusy
from jobenergy.collector.ingest import (
    BatchConflict,
    IngestRejected,
    IngestResult,
    ingest_batch,
    ingest_group,
    prepare,
)
from jobenergy.collector.models import Base, EnergyInterval, IngestedBatch, Job, JobEnergy
from jobenergy.collector.settings import ServerSettings
from jobenergy.core.schema import Batch
from tests.collector.test_ingest import HUGE, expected_job_totals, stored_job_totals

# Columns that differ between two stores of the same batches by design: row ids, when they were
# stored, the version counter of a job's parts (bumped once per transaction), and the
# batches' content hashes (the two scenarios differ in the cluster's name).
VOLATILE = {"id", "received_at", "updated_at", "parts_version", "content_sha256"}

NODES_JOBS = {  # node -> job -> weight: 501 and 503 run on several nodes
    "n1": {"501": 3, "503": 1},
    "n2": {"501": 2},
    "n3": {"502": 1, "503": 2},
    "n4": {"503": 5},
}


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:  # a PUE and an intensity that round: facility and CO2e
        apply_server_defaults(conn, ServerSettings(
            db_url=db_url, pue=1.25, carbon_intensity_g_per_kwh=231.7))
    yield engine
    engine.dispose()


def annotated(batch: Batch, round_no: int) -> Batch:
    """``batch`` with what merges across batches: phases and models (job 501), phase
    records whose tags later batches overwrite, and per-step energy (job 503)."""
    data = batch.model_dump()
    for interval in data["intervals"]:
        for sample in interval["jobs"]:
            if sample["job_id"] == "501" and round_no >= 1:
                sample["phase"], sample["model"] = "training", "llama-7b"
            if sample["job_id"] == "503":
                sample["step_cpu_us"] = {"0": 1_000 + round_no, "batch": 3_000}
        if any(sample["job_id"] == "501" for sample in interval["jobs"]):
            interval["phases"] = [{
                "job_id": "501", "phase": "training", "model": "llama-7b",
                "start": interval["start"], "end": interval["end"], "samples": 64 + round_no,
                "metrics": {"loss": 2.0 / (1 + round_no), f"m{round_no}": 1.0},
                "tags": {"node": batch.node, "round": str(round_no)},
            }]
    return Batch.model_validate(data)


def scenario(make_batch, cluster: str) -> list[list[Batch]]:
    """Four rounds of pushes of four nodes, across an hour edge; each push gives its own uid."""
    start = make_batch().intervals[0].start.replace(minute=59, second=0)
    rounds = []
    for r in range(4):
        rounds.append([
            annotated(make_batch(cluster=cluster, node=node, seq=r, jobs=jobs, n_intervals=3,
                                 start=start + timedelta(seconds=30 * r),
                                 uid=1000 + r + i), r)
            for i, (node, jobs) in enumerate(NODES_JOBS.items())
        ])
    return rounds


def rows_of(conn: Connection, cluster: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``cluster`` in every table with a cluster column, without it and the
    volatile columns; floats to 6 places (a sum's order may change its last bit)."""
    out = {}
    for table in Base.metadata.sorted_tables:
        if "cluster" not in table.c or not inspect(conn).has_table(table.name):
            continue
        columns = [c for c in table.c if c.name != "cluster" and c.name not in VOLATILE]
        rows = conn.execute(select(*columns).where(table.c.cluster == cluster)).all()
        out[table.name] = sorted(
            (tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows),
            key=repr)
    return out


def test_groups_store_what_one_by_one_stores(engine, make_batch):
    for batches in scenario(make_batch, "single"):
        for batch in batches:
            with Session(engine) as session, session.begin():
                ingest_batch(session, batch)
    grouped = scenario(make_batch, "grouped")
    for batches in grouped:
        with engine.begin() as conn:
            outcomes = ingest_group(conn, [prepare(b) for b in batches])
        assert outcomes == [IngestResult(duplicate=False, records=sum(
            len(s.jobs_uj) + (1 if s.unattributed_uj or not s.jobs_uj else 0)
            for iv in b.intervals for s in iv.sources)) for b in batches]
    with engine.connect() as conn:
        single, group = rows_of(conn, "single"), rows_of(conn, "grouped")
    assert group == single
    # The scenario has what merges: a job on 3 nodes of one group, phases, steps, 2 hours.
    assert len(single["job_phase"]) == 1 and len(single["job_step_energy"]) >= 2
    assert len({row[1] for row in single["job_energy_hour"]}) == 2
    with Session(engine) as session:
        assert stored_job_totals(session, "grouped") == expected_job_totals(
            *[b for batches in grouped for b in batches])
        uid = session.execute(select(Job.uid).where(Job.cluster == "grouped",
                                                    Job.job_id == "503")).scalar_one()
        assert uid == 1000  # n1's, the first batch's, as one by one (n3's, n4's differ)


def test_a_repeated_group_is_all_duplicates(engine, make_batch):
    batches = scenario(make_batch, "c1")[0]
    with engine.begin() as conn:
        ingest_group(conn, [prepare(b) for b in batches])
    with engine.begin() as conn:
        again = ingest_group(conn, [prepare(b) for b in reversed(batches)])
    assert again == [IngestResult(duplicate=True, records=0)] * len(batches)


def test_a_group_holds_one_batch_per_node(engine, make_batch):
    first = make_batch(seq=0)
    second = make_batch(seq=1, start=first.intervals[-1].end)
    with engine.begin() as conn, pytest.raises(ValueError, match="one batch per node"):
        ingest_group(conn, [prepare(first), prepare(second)])


def run_writer(engine, submissions: list[Batch], max_batches: int = 64,
               ) -> tuple[list[Any], list[int]]:
    """Hand every batch to one GroupWriter at once; return the outcomes and group sizes."""
    return run_rounds(engine, [submissions], max_batches)[0]


def run_rounds(engine, rounds: list[list[Batch]], max_batches: int = 64,
               ) -> list[tuple[list[Any], list[int]]]:
    """``run_writer`` for each round in turn, with one GroupWriter (and what it learnt)."""
    async def main() -> list[tuple[list[Any], list[int]]]:
        writer = GroupWriter(sessionmaker(engine), anyio.CapacityLimiter(4), max_batches,
                             writers=1, in_transaction=lambda conn: None)
        results = []
        for submissions in rounds:
            sizes: list[int] = []
            writer.observe_group = sizes.append
            outcomes = await asyncio.gather(*(writer.store(prepare(b)) for b in submissions),
                                            return_exceptions=True)
            results.append((outcomes, sizes))
        return results

    return asyncio.run(main())


def test_one_bad_batch_costs_the_group_nothing(engine, make_batch, caplog):
    # Stored before: node n1's first push, n4's, and n6's, whose totals near the 64-bit limit.
    n1_first = make_batch(node="n1", seq=0, jobs={"601": 1})
    n4_stored = make_batch(node="n4", seq=0, jobs={"604": 1})
    near_limit = make_batch(node="n6", seq=0, jobs={"900": 1}, n_intervals=1_500, **HUGE)
    for batch in (n1_first, n4_stored, near_limit):
        with Session(engine) as session, session.begin():
            ingest_batch(session, batch)
    after = n1_first.intervals[-1].end
    overlapping = make_batch(node="n1", seq=1, jobs={"601": 1})  # n1's span again, new key
    good = make_batch(node="n2", seq=0, jobs={"602": 1}, start=after)
    good_next = make_batch(node="n2", seq=1, jobs={"602": 1},
                           start=after + timedelta(seconds=30))
    conflicting = make_batch(node="n3", seq=0, jobs={"603": 1})
    conflicting_stored = make_batch(node="n3", seq=0, jobs={"603": 2})
    with Session(engine) as session, session.begin():
        ingest_batch(session, conflicting_stored)
    duplicate = make_batch(node="n4", seq=0, jobs={"604": 1})
    overflowing = make_batch(node="n6", seq=1, jobs={"900": 1}, n_intervals=700,
                             start=after + timedelta(days=3000), **HUGE)
    good_other = make_batch(node="n5", seq=0, jobs={"605": 1, "602": 1}, start=after)
    caplog.set_level(logging.INFO, logger="jobenergy.collector.group_commit")
    outcomes, sizes = run_writer(engine, [overlapping, good, conflicting, duplicate,
                                          overflowing, good_other, good_next])
    assert isinstance(outcomes[0], IngestRejected) and "overlaps" in str(outcomes[0])
    assert isinstance(outcomes[2], BatchConflict)
    assert outcomes[3] == IngestResult(duplicate=True, records=0)
    assert isinstance(outcomes[4], DBAPIError)  # job 900 past BIGINT
    for index in (1, 5, 6):
        assert outcomes[index] == IngestResult(duplicate=False, records=outcomes[index].records)
        assert outcomes[index].records > 0
    # One group of six (n2's second push waits: one batch per node), which failed (job 900
    # past BIGINT) and was stored one by one; then n2's second push alone.
    assert sizes == [6, 1]
    assert "a group of 6 batches was not stored" in caplog.text
    with Session(engine) as session:
        stored = {(b.node, b.seq) for b in session.scalars(select(IngestedBatch))}
        assert stored == {("n1", 0), ("n4", 0), ("n6", 0), ("n3", 0), ("n2", 0), ("n5", 0),
                          ("n2", 1)}
        assert stored_job_totals(session) == expected_job_totals(
            n1_first, n4_stored, near_limit, conflicting_stored, good, good_next, good_other)


def test_two_agents_with_one_node_name_cost_their_group_nothing(engine, make_batch, caplog):
    """The overlapping batch is refused alone, inside the group: no fallback, whose cost a
    misconfigured pair of agents would otherwise impose on every group, batch after batch."""
    first = make_batch(node="n1", seq=0, jobs={"601": 1})
    with Session(engine) as session, session.begin():
        ingest_batch(session, first)
    twin = make_batch(node="n1", boot_id="twin", seq=0, jobs={"611": 1})  # n1's span again
    others = [make_batch(node=f"n{n}", seq=0, jobs={f"60{n}": 1, "601": 1}) for n in (2, 3)]
    caplog.set_level(logging.INFO, logger="jobenergy.collector.group_commit")
    outcomes, sizes = run_writer(engine, [others[0], twin, others[1]])
    assert sizes == [3]
    assert "not stored" not in caplog.text
    assert isinstance(outcomes[1], IngestRejected) and "overlaps" in str(outcomes[1])
    assert [o.duplicate for o in (outcomes[0], outcomes[2])] == [False, False]
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(first, *others)
    # Its key was not kept: the same key with energy of its own is stored later.
    moved = make_batch(node="n1", boot_id="twin", seq=0, jobs={"611": 1},
                       start=first.intervals[-1].end)
    outcomes, _ = run_writer(engine, [moved])
    assert outcomes == [IngestResult(duplicate=False, records=outcomes[0].records)]


def test_a_nodes_batches_handed_at_once_go_in_turn(engine, make_batch):
    batches = []
    start = make_batch().intervals[0].start
    for seq in range(group_commit.WAITING_PER_NODE):
        batches.append(make_batch(node="n1", seq=seq, start=start + timedelta(seconds=30 * seq)))
        batches.append(make_batch(node="n2", seq=seq, start=start + timedelta(seconds=30 * seq)))
    outcomes, sizes = run_writer(engine, batches, max_batches=64)
    assert all(isinstance(o, IngestResult) and not o.duplicate for o in outcomes), outcomes
    assert sizes == [2] * group_commit.WAITING_PER_NODE
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(*batches)
    # The same again, with retries of stored ones among them: duplicates, nothing doubled.
    outcomes, sizes = run_writer(engine, batches[:4] + batches[:4], max_batches=3)
    assert outcomes == [IngestResult(duplicate=True, records=0)] * 8
    assert sizes == [2, 2, 2, 2]  # at most 3, one per node
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(*batches)


@pytest.mark.postgres
def test_concurrent_groups_of_shared_jobs_never_deadlock(pg_fresh_url, make_batch, caplog):
    """Two collectors' writers, each with groups over the same multi-node jobs, both ways
    round: every group commits whole (a deadlock would be resolved by PostgreSQL aborting
    one, then the batches stored one by one: the log says so)."""
    from jobenergy.collector.db import upgrade

    upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url, pool_size=8)
    caplog.set_level(logging.INFO, logger="jobenergy.collector.group_commit")
    start = make_batch().intervals[0].start
    jobs = {"701": 1, "702": 2, "703": 3}
    mine: dict[int, list[Batch]] = {0: [], 1: []}
    for seq in range(group_commit.WAITING_PER_NODE):
        for n in range(12):
            # Collector n % 2 gets node n; each node runs every job, in its own order.
            order = dict(sorted(jobs.items(), reverse=bool(n % 3)))
            mine[n % 2].append(make_batch(node=f"n{n:02d}", seq=seq, jobs=order,
                                          start=start + timedelta(seconds=30 * seq)))
    results: dict[int, tuple[list[Any], list[int]]] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(
        k, run_writer(engine, mine[k], max_batches=64))) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        for k in (0, 1):
            outcomes, sizes = results[k]
            assert all(isinstance(o, IngestResult) and not o.duplicate for o in outcomes)
            # six nodes per collector, one push each per group
            assert sizes == [6] * group_commit.WAITING_PER_NODE
        assert "was not stored" not in caplog.text
        with Session(engine) as session:
            assert stored_job_totals(session) == expected_job_totals(*mine[0], *mine[1])
            rows = session.execute(select(EnergyInterval.job_id)).all()
            assert len(rows) == sum(o.records for k in (0, 1) for o in results[k][0])
            assert session.get(JobEnergy, ("c1", "701", "n00", "cpu", "package-0")) is not None
    finally:
        engine.dispose()


def test_concurrent_posts_get_their_own_answers(client, make_batch):
    """Agents posting at once over HTTP: each gets its own batch's answer (200, 409, 422)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.collector.test_metrics import scrape

    start = make_batch().intervals[0].start
    pushes = {f"n{n}": [make_batch(node=f"n{n}", seq=seq, jobs={"801": 1, f"8{n}0": 2},
                                   start=start + timedelta(seconds=30 * seq))
                        for seq in range(3)] for n in range(1, 9)}
    stored = make_batch(node="n9", seq=0, jobs={"809": 1})
    assert post(client, stored).status_code == 200
    bad = {
        "overlap": (make_batch(node="n9", seq=1, jobs={"809": 1}), 422),
        "conflict": (make_batch(node="n9", seq=0, jobs={"809": 3}), 409),
    }

    def agent(batches: list[Batch]) -> list[int]:
        return [post(client, batch).status_code for batch in batches]

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(agent, [*pushes.values(), *([b] for b, _ in bad.values())]))
    assert answers == [[200] * 3] * 8 + [[status] for _, status in bad.values()]
    with Session(client.app.state.engine) as session:
        assert stored_job_totals(session) == expected_job_totals(
            stored, *[b for batches in pushes.values() for b in batches])
    _, samples = scrape(client)
    # Every batch handed to the writer is counted in one group: the first, then 26.
    assert samples[("jobenergy_collector_ingest_group_batches_sum", ())] == 1 + 24 + 2


def post(client, batch: Batch) -> Any:
    return client.post("/api/v1/batches", content=batch.model_dump_json().encode(),
                       headers={"Content-Type": "application/json"})


def test_a_node_has_few_batches_waiting(engine, make_batch):
    """An agent sends one batch at a time (and the same again after a timeout): a node
    with more waiting is answered busy (503 over HTTP), not queued without end."""
    start = make_batch().intervals[0].start
    batches = [make_batch(node="n1", seq=seq, start=start + timedelta(seconds=30 * seq))
               for seq in range(group_commit.WAITING_PER_NODE + 2)]
    outcomes, sizes = run_writer(engine, batches)
    kept = group_commit.WAITING_PER_NODE
    assert all(isinstance(o, IngestResult) for o in outcomes[:kept])
    assert all(isinstance(o, WriterBusy) for o in outcomes[kept:])
    assert sizes == [1] * kept
    with Session(engine) as session:
        assert stored_job_totals(session) == expected_job_totals(*batches[:kept])


def test_large_batches_go_alone_every_other_group(engine, make_batch, monkeypatch):
    """A node's huge batches never hold the others' small ones up for long, nor wait behind
    them without end."""
    monkeypatch.setattr(group_commit, "GROUP_ROWS", 30)  # a 1-interval batch has 7 rows
    start = make_batch().intervals[0].start
    huge = [make_batch(node="big", seq=seq, n_intervals=6,
                       start=start + timedelta(seconds=60 * seq)) for seq in range(2)]
    small = [make_batch(node=f"s{n}", seq=0, n_intervals=1) for n in range(8)]
    outcomes, sizes = run_writer(engine, [*huge, *small])
    # One large batch waits at a time (the second is answered busy), beside the small ones.
    assert isinstance(outcomes[1], WriterBusy)
    assert all(isinstance(o, IngestResult) and o.records for o in [outcomes[0], *outcomes[2:]])
    assert sizes == [4, 1, 4]


def test_a_batch_that_failed_alone_is_not_grouped_again(engine, make_batch, caplog):
    """Sent again (the agent keeps a refused batch), it would fail every group it joins."""
    start = make_batch().intervals[0].start
    near_limit = make_batch(node="n6", seq=0, jobs={"900": 1}, n_intervals=1_500, **HUGE)
    with Session(engine) as session, session.begin():
        ingest_batch(session, near_limit)
    poisoned = make_batch(node="n6", seq=1, jobs={"900": 1}, n_intervals=700,
                          start=start + timedelta(days=3000), **HUGE)  # job 900 past BIGINT
    caplog.set_level(logging.INFO, logger="jobenergy.collector.group_commit")
    others = [make_batch(node=f"s{n}", seq=1, n_intervals=1, start=start + timedelta(minutes=5))
              for n in range(2)]
    again = [make_batch(node=f"s{n}", seq=2, n_intervals=1, start=start + timedelta(minutes=6))
             for n in range(2)]
    (outcomes, sizes), (outcomes_again, sizes_again) = run_rounds(
        engine, [[poisoned, *others], [poisoned, *again]])
    assert isinstance(outcomes[0], DBAPIError) and sizes == [3]
    assert isinstance(outcomes_again[0], DBAPIError)
    assert all(isinstance(o, IngestResult) for o in [*outcomes[1:], *outcomes_again[1:]])
    assert sizes_again == [2, 1]  # the others, then the poisoned one alone: no fallback
    assert caplog.text.count("not stored") == 1


def test_a_database_down_answers_the_group_at_once(make_batch):
    """Unreachable, the database is tried once for the group, not once more per batch."""
    from sqlalchemy import event

    from tests.pgserver import free_port

    engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    connects = []
    event.listen(engine, "do_connect", lambda *args: connects.append(1))
    try:
        batches = [make_batch(node=f"n{n}", seq=0) for n in range(5)]
        outcomes, sizes = run_writer(engine, batches)
    finally:
        engine.dispose()
    assert all(isinstance(o, OperationalError) for o in outcomes)
    assert sizes == [5] and len(connects) == 1


def test_a_silent_database_is_given_up_on(make_batch):
    """A server that takes the connection and never answers (a host gone behind a firewall)
    is given up on after the connect timeout: the batches are answered 503, never held."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes the handshakes; nobody ever answers
    port = listener.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
    done: list[tuple[list[Any], list[int]]] = []
    worker = threading.Thread(target=lambda: done.append(
        run_writer(engine, [make_batch(node=f"n{n}", seq=0) for n in range(3)])), daemon=True)
    try:
        worker.start()
        worker.join(20 * CONNECT_TIMEOUT_S)  # a guard against hanging, not a measurement
        assert done, "still waiting for a database that never answers"
        outcomes, sizes = done[0]
        assert all(isinstance(o, OperationalError) for o in outcomes) and sizes == [3]
        assert "timeout" in str(outcomes[0]).lower()
    finally:
        engine.dispose()
        listener.close()


@pytest.mark.postgres
def test_a_node_with_batches_waiting_is_answered_busy_over_http(pg_fresh_url, make_client,
                                                                make_batch):
    """Held up (here: the test holds the node's lock), a node's batches wait, up to
    ``WAITING_PER_NODE``; one more is answered 503 with Retry-After, and the rest stored."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    from jobenergy.collector.db import upgrade
    from tests.deploy.test_prometheus import wait_for

    upgrade(pg_fresh_url)
    client = make_client(ServerSettings(db_url=pg_fresh_url, auth="none", migrate=False,
                                        pue=1.0, carbon_intensity_g_per_kwh=None))
    writer = client.app.state.group_writer
    start = make_batch().intervals[0].start
    kept = group_commit.WAITING_PER_NODE
    batches = [make_batch(node="n1", seq=seq, start=start + timedelta(seconds=30 * seq))
               for seq in range(kept + 2)]
    engine = make_engine(pg_fresh_url)
    lock = "hashtextextended('jobenergy:node:c1/n1', 0)"
    try:
        with ThreadPoolExecutor(kept + 2) as pool:
            with engine.connect() as holder:
                holder.execute(text(f"SELECT pg_advisory_lock({lock})"))
                try:
                    answers = [pool.submit(post, client, batches[0])]
                    wait_for(lambda: holder.execute(text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT "
                        "granted")).scalar_one(),
                        "the first batch's group waiting for the node's lock")
                    answers += [pool.submit(post, client, batch)
                                for batch in batches[1:kept + 1]]
                    wait_for(lambda: writer._waiting_by_node[("c1", "n1")] == kept,
                             f"{kept} batches of n1 waiting")
                    # Answered at once, while the others wait (queued, it would wait too).
                    busy = pool.submit(post, client, batches[kept + 1]).result(timeout=60)
                finally:  # a session's lock outlives its transactions: released by hand
                    holder.execute(text(f"SELECT pg_advisory_unlock({lock})"))
            statuses = [answer.result().status_code for answer in answers]
    finally:
        engine.dispose()
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    assert "waiting to be stored" in busy.json()["detail"]
    assert statuses == [200] * (kept + 1)
    with Session(client.app.state.engine) as session:
        assert stored_job_totals(session) == expected_job_totals(*batches[:kept + 1])


def test_small_batches_waiting_never_keep_a_large_one_out(engine, make_batch, monkeypatch):
    monkeypatch.setattr(group_commit, "GROUP_ROWS", 30)  # a 1-interval batch has 7 rows
    monkeypatch.setattr(group_commit, "WAITING_ROWS", 60)
    start = make_batch().intervals[0].start
    small = [make_batch(node=f"s{n}", seq=0, n_intervals=1) for n in range(9)]
    large = [make_batch(node=f"big{n}", seq=0, n_intervals=6, start=start) for n in range(2)]
    outcomes, sizes = run_writer(engine, [*small, *large])
    assert all(isinstance(o, IngestResult) for o in outcomes[:8])  # 56 rows waiting
    assert isinstance(outcomes[8], WriterBusy) and "rows are waiting" in str(outcomes[8])
    assert isinstance(outcomes[9], IngestResult)  # beside them
    assert isinstance(outcomes[10], WriterBusy) and "more than 30 rows" in str(outcomes[10])
    assert sorted(sizes) == [1, 4, 4]


def test_a_failed_writer_answers_every_waiting_batch(engine, make_batch, caplog):
    """A fault of the writer itself (here: its metrics hook raising) answers its group and
    the batches waiting busy (503), forgets them, and the next batch is stored as usual."""
    batches = [make_batch(node=f"n{n}", seq=0) for n in range(3)]
    later = make_batch(node="n0", seq=1, start=batches[0].intervals[-1].end)

    def broken_hook(size: int) -> None:
        raise RuntimeError("metrics hook broken")

    async def main() -> tuple[list[Any], Any, int]:
        writer = GroupWriter(sessionmaker(engine), anyio.CapacityLimiter(4), 2, writers=1,
                             in_transaction=lambda conn: None)
        writer.observe_group = broken_hook
        first = await asyncio.gather(*(writer.store(prepare(b)) for b in batches),
                                     return_exceptions=True)
        writer.observe_group = lambda size: None
        return first, await writer.store(prepare(later)), writer._waiting_rows

    caplog.set_level(logging.ERROR, logger="jobenergy.collector.group_commit")
    first, stored_later, rows_left = asyncio.run(main())
    assert all(isinstance(o, WriterBusy) for o in first), first
    assert "the batch writer failed" in caplog.text
    assert isinstance(stored_later, IngestResult) and rows_left == 0
