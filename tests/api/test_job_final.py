"""The job JSON says whether its energy is final, which nodes no source covered, and what
energy no step carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobenergy.core.schema import Batch
from jobenergy.core.units import UJ_PER_KWH

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NO_SOURCES: tuple[tuple[str, str], ...] = ()


def post_batch(client, batch) -> None:
    response = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert response.status_code == 200, response.text


def post_event(client, **body) -> None:
    body.setdefault("cluster", "c1")
    body["time"] = body["time"].isoformat()
    response = client.post("/api/v1/jobs/events", json=body)
    assert response.status_code == 200, response.text


def job(client, job_id: str) -> dict:
    response = client.get(f"/api/v1/jobs/{job_id}", params={"cluster": "c1"})
    assert response.status_code == 200, response.text
    listed = client.get("/api/v1/jobs", params={"job_id": job_id, "cluster": "c1"}).json()

    def stable(out: dict) -> dict:  # a running job's elapsed time grows between the calls
        quality = {**out["quality"], "coverage": None, "elapsed_s": None}
        return {**out, "elapsed_s": None, "quality": quality}

    # The list says the same as the lookup.
    assert [stable(j) for j in listed["jobs"]] == [stable(response.json())]
    return response.json()


def last_end(batch) -> datetime:
    return batch.intervals[-1].end


def test_final_once_every_node_has_pushed_past_the_end(client, make_batch):
    end = T0 + timedelta(seconds=45)
    post_event(client, job_id="500", event="start", time=T0, nodes=["n1", "n2"])
    n1 = make_batch(node="n1", jobs={"500": 1}, n_intervals=6)  # up to T0 + 60 s
    n2 = make_batch(node="n2", jobs={"500": 1}, n_intervals=4)  # up to T0 + 40 s
    post_batch(client, n1)
    post_batch(client, n2)
    assert last_end(n1) >= end > last_end(n2)
    assert job(client, "500")["final"] is False  # running: no end yet
    post_event(client, job_id="500", event="end", time=end, state="COMPLETED")
    before = job(client, "500")
    assert before["state"] == "COMPLETED" and before["final"] is False  # n2 still behind

    # n2's next batch reaches the end; the job is gone from it by then.
    more = make_batch(node="n2", seq=1, jobs={}, start=last_end(n2), n_intervals=1)
    assert last_end(more) >= end
    post_batch(client, more)
    after = job(client, "500")
    assert after["final"] is True
    assert after["energy_uj"] == before["energy_uj"]  # nothing of the job in the last batch


def test_final_without_slurm_nodes_uses_the_nodes_that_saw_the_job(client, make_batch):
    post_batch(client, make_batch(node="n1", jobs={"9": 1}, n_intervals=3))
    post_batch(client, make_batch(node="n2", jobs={"9": 1}, n_intervals=1))
    post_event(client, job_id="9", event="end", time=T0 + timedelta(seconds=30))
    assert job(client, "9")["nodes"] == ["n1", "n2"]
    assert job(client, "9")["final"] is False  # n2 reported only up to T0 + 10 s
    post_batch(client, make_batch(node="n2", seq=1, jobs={}, start=T0 + timedelta(seconds=10),
                                  n_intervals=2))
    assert job(client, "9")["final"] is True


def test_a_node_not_heard_from_keeps_the_job_not_final(client, make_batch):
    post_event(client, job_id="7", event="start", time=T0, nodes=["n1", "silent"])
    post_batch(client, make_batch(node="n1", jobs={"7": 1}, n_intervals=6))
    post_event(client, job_id="7", event="end", time=T0 + timedelta(seconds=20))
    out = job(client, "7")
    assert out["final"] is False
    # A node that never reported is not known to lack counters: not unmeasured.
    assert out["quality"]["unmeasured"] is False and out["quality"]["unmeasured_nodes"] == []


def test_a_node_without_counters(client, make_batch):
    # n9 has no RAPL and no NVML: its agent sends intervals with no sources, and the jobs.
    bare = make_batch(node="n9", jobs={"800": 1, "801": 1}, sources=NO_SOURCES, n_intervals=3)
    assert all(iv.sources == [] and iv.jobs for iv in bare.intervals)
    post_batch(client, bare)
    # Job 801 also ran on n1, which has counters.
    measured = make_batch(node="n1", jobs={"801": 1}, n_intervals=3)
    post_batch(client, measured)
    # Job 802 ran on n9 too short for its agent to see it: Slurm's node list says so.
    post_event(client, job_id="802", event="start", time=T0, nodes=["n9"])
    post_event(client, job_id="802", event="end", time=T0 + timedelta(seconds=1))
    # Job 803 is only known from Slurm, on a node that has not reported yet.
    post_event(client, job_id="803", event="start", time=T0, nodes=["n5"])

    only_bare = job(client, "800")
    assert only_bare["energy_uj"] == 0 and only_bare["nodes"] == ["n9"]
    assert only_bare["quality"]["unmeasured"] is True
    assert only_bare["quality"]["unmeasured_nodes"] == ["n9"]
    assert only_bare["quality"]["sources"] == []

    mixed = job(client, "801")
    assert mixed["energy_uj"] == sum(
        src.jobs_uj["801"] for iv in measured.intervals for src in iv.sources if
        src.component != "psys")
    assert mixed["quality"]["unmeasured"] is False
    assert mixed["quality"]["unmeasured_nodes"] == ["n9"]
    assert set(mixed["nodes"]) == {"n1", "n9"}

    unseen = job(client, "802")
    assert unseen["quality"]["unmeasured"] is True
    assert unseen["quality"]["unmeasured_nodes"] == ["n9"]
    assert unseen["final"] is True  # n9 reported past its end: nothing more will come

    assert job(client, "803")["quality"]["unmeasured"] is False

    # Nodes with counters never make a job unmeasured, even with 0 µJ of a source.
    post_batch(client, make_batch(node="n2", jobs={"804": 0}, unattributed_weight=1,
                                  n_intervals=1))
    zero = job(client, "804")
    assert zero["energy_uj"] == 0 and zero["quality"]["unmeasured"] is False


def test_job_node_presence_on_a_node_without_counters(db_url, make_batch):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from jobenergy.collector.db import make_engine
    from jobenergy.collector.ingest import ingest_batch
    from jobenergy.collector.models import EnergyInterval, Job, JobNode, NodeProgress

    bare = make_batch(node="n9", jobs={"800": 1}, sources=NO_SOURCES, n_intervals=3)
    engine = make_engine(db_url)
    try:
        with Session(engine) as session, session.begin():
            assert ingest_batch(session, bare).records == 0
        with Session(engine) as session:
            assert session.scalars(select(EnergyInterval)).all() == []
            presence = session.scalars(select(JobNode)).one()
            assert (presence.job_id, presence.node, presence.intervals) == ("800", "n9", 3)
            assert (presence.first_at, presence.last_at) == (
                bare.intervals[0].start, bare.intervals[-1].end)
            progress = session.scalars(select(NodeProgress)).one()
            assert (progress.node, progress.last_at, progress.last_sources) == (
                "n9", bare.intervals[-1].end, 0)
            assert session.get(Job, ("c1", "800")).uid == 1000
    finally:
        engine.dispose()


def _with_steps(batch, steps_per_interval):
    data = batch.model_dump(mode="json")
    for interval, steps in zip(data["intervals"], steps_per_interval, strict=True):
        for sample in interval["jobs"]:
            sample["step_cpu_us"] = steps.get(sample["job_id"], {})
    return Batch.model_validate(data)


def test_steps_add_up_with_the_outside_entry(client, make_batch):
    # Steps' CPU time in intervals 0 and 2 only; interval 1 (and 3) add to no step.
    batch = _with_steps(
        make_batch(jobs={"54": 1}, n_intervals=4),
        [{"54": {"batch": 3, "extern": 1, "0+1": 2}}, {}, {"54": {"batch": 1}}, {}],
    )
    post_batch(client, batch)
    out = job(client, "54")
    steps = out["steps"]
    assert [s["step"] for s in steps] == ["batch", "extern", "0+1", "outside"]
    for component, energy in out["by_component"].items():
        assert sum(s["by_component"].get(component, 0) for s in steps) == energy
    assert sum(s["energy_uj"] for s in steps) == out["energy_uj"]
    outside = steps[-1]
    expected = {}
    for index in (1, 3):
        for src in batch.intervals[index].sources:
            if src.component != "psys":
                expected[src.component] = expected.get(src.component, 0) + src.jobs_uj["54"]
    assert outside["by_component"] == expected
    assert outside["energy_uj"] == sum(expected.values())
    assert outside["energy_kwh"] == pytest.approx(outside["energy_uj"] / UJ_PER_KWH)


def test_no_outside_entry_when_the_steps_carry_everything(client, make_batch):
    batch = _with_steps(make_batch(jobs={"55": 1}, n_intervals=2),
                        [{"55": {"batch": 1}}, {"55": {"0": 1}}])
    post_batch(client, batch)
    out = job(client, "55")
    assert [s["step"] for s in out["steps"]] == ["batch", "0"]
    assert sum(s["energy_uj"] for s in out["steps"]) == out["energy_uj"]
