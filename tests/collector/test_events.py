"""POST /api/v1/jobs/events: merging starts and ends, in any order, without erasing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def event(kind: str, time: datetime, job_id: str = "42", **fields) -> dict:
    return {"cluster": "c1", "job_id": job_id, "event": kind, "time": time.isoformat(), **fields}


def send(client, body: dict):
    return client.post("/api/v1/jobs/events", json=body)


def job_row(db_snapshot, db_url, job_id: str = "42") -> dict:
    from jobenergy.collector.models import Job

    names = [c.name for c in Job.__table__.columns]
    rows = [dict(zip(names, row, strict=True)) for row in db_snapshot(db_url)["job"]]
    return next(row for row in rows if row["job_id"] == job_id)


def test_start_then_end_merge(client, db_url, db_snapshot):
    start = event("start", T0, user="alice", uid=1001, account="phys", partition="gpu",
                  name="train", nodes=["n1", "n2"], gpus=["0", "1"], tags={"model": "llama"})
    assert send(client, start).status_code == 200
    end = event("end", T0 + timedelta(hours=2), exit_code=0, tags={"phase": "training"})
    response = send(client, end)
    assert response.status_code == 200, response.text
    assert response.json() == {"cluster": "c1", "job_id": "42", "state": "COMPLETED"}
    row = job_row(db_snapshot, db_url)
    assert (row["user"], row["uid"], row["account"], row["partition"], row["name"]) == (
        "alice", 1001, "phys", "gpu", "train")
    assert row["nodes"] == ["n1", "n2"] and row["gpus"] == ["0", "1"]
    assert row["tags"] == {"model": "llama", "phase": "training"}
    assert row["exit_code"] == "0"
    assert (row["end_at"] - row["start_at"]) == timedelta(hours=2)


def test_end_before_start_event_and_explicit_state(client, db_url, db_snapshot):
    assert send(client, event("end", T0 + timedelta(minutes=5), state="TIMEOUT",
                              exit_code="0:15")).status_code == 200
    assert send(client, event("start", T0, user="bob")).status_code == 200
    row = job_row(db_snapshot, db_url)
    assert row["state"] == "TIMEOUT"  # a late start does not turn it back to RUNNING
    assert row["exit_code"] == "0:15" and row["user"] == "bob"
    assert row["start_at"] == T0 and row["end_at"] == T0 + timedelta(minutes=5)


def test_later_events_do_not_erase_known_fields(client, db_url, db_snapshot):
    send(client, event("start", T0, user="alice", account="phys", tags={"a": "1"}))
    send(client, event("start", T0, account=None, tags={"b": "2"}))  # repeated, less known
    row = job_row(db_snapshot, db_url)
    assert row["user"] == "alice" and row["account"] == "phys"
    assert row["tags"] == {"a": "1", "b": "2"} and row["state"] == "RUNNING"


@pytest.mark.parametrize("order", ["start-first", "end-first"])
def test_end_before_start_is_rejected_and_job_unchanged(client, db_url, db_snapshot, order):
    first = (event("start", T0, user="alice") if order == "start-first"
             else event("end", T0, state="COMPLETED"))
    assert send(client, first).status_code == 200
    before = db_snapshot(db_url)
    bad = (event("end", T0 - timedelta(seconds=1), state="FAILED", user="mallory")
           if order == "start-first" else event("start", T0 + timedelta(seconds=1), user="x"))
    response = send(client, bad)
    assert response.status_code == 422
    assert "before start" in response.json()["detail"]
    assert db_snapshot(db_url) == before


def test_invalid_event_names_the_field(client, db_url, db_snapshot):
    before = db_snapshot(db_url)
    response = send(client, {**event("start", T0), "event": "resume"})
    assert response.status_code == 422
    assert "event" in response.json()["detail"]
    response = send(client, {**event("start", T0), "job_id": "12 34"})
    assert response.status_code == 422 and "job_id" in response.json()["detail"]
    assert db_snapshot(db_url) == before


def test_energy_before_events_creates_job_with_uid(client, make_batch, db_url, db_snapshot):
    batch = make_batch(jobs={"42": 1}, uid=5005)
    assert client.post("/api/v1/batches", content=batch.model_dump_json()).status_code == 200
    row = job_row(db_snapshot, db_url)
    assert row["uid"] == 5005 and row["user"] is None and row["start_at"] is None
    send(client, event("start", T0, user="carol"))
    row = job_row(db_snapshot, db_url)
    assert (row["uid"], row["user"], row["start_at"]) == (5005, "carol", T0)


def test_each_nodes_prolog_adds_its_gpus(client, db_url, db_snapshot):
    for node in ("n1", "n2"):
        body = event("start", T0, nodes=[node], gpus=[f"{node}:0", f"{node}:1"])
        assert send(client, body).status_code == 200
    assert send(client, event("start", T0, gpus=["n1:0"])).status_code == 200  # a repeat
    row = job_row(db_snapshot, db_url)
    assert row["nodes"] == ["n1", "n2"]
    assert row["gpus"] == ["n1:0", "n1:1", "n2:0", "n2:1"]


@pytest.mark.parametrize("comment", [
    "model=resnet50 phase=training", "model=resnet50,phase=training",
    "model=resnet50; phase=training", "Model=resnet50 Phase=Training",
])
def test_comment_tags_in_the_ways_users_write_them(comment):
    from jobenergy.collector.events import comment_tags

    assert comment_tags(comment) == {"model": "resnet50", "phase": "training"}


def test_a_mix_that_does_not_add_up_is_refused():
    from pydantic import ValidationError

    from jobenergy.collector.clusters import CarbonSetting

    with pytest.raises(ValidationError, match="add up to 90"):
        CarbonSetting(source="mix", shares={"coal": 50, "nuclear": 40})
    with pytest.raises(ValidationError):
        CarbonSetting(source="constant", g_per_kwh=float("nan"))
    assert CarbonSetting(source="mix", shares={"coal": 0.25, "nuclear": 0.75}).shares


# (id, fields that break a valid start event, words the 422 must name). Each gave a 500 (an
# overflowing date, a uid past BIGINT) or was stored on SQLite and refused only by PostgreSQL.
BAD_EVENTS = [
    ("time-before-1970", {"time": -10_000_000_000}, ["time", "1970"]),
    ("time-year-9999", {"time": "9999-12-31T23:59:59"}, ["time", "2100"]),
    ("time-past-utc", {"time": "9999-12-31T23:59:59-14:00"}, ["time", "2100"]),
    ("uid-2^63", {"uid": 2**63}, ["uid"]),
    ("exit-code-2^70", {"exit_code": 2**70}, ["exit_code"]),
    ("nul-in-name", {"name": "train\x00"}, ["name", "NUL"]),
    ("nul-in-cluster", {"cluster": "c\x00"}, ["cluster", "NUL"]),
    ("nul-in-tag", {"tags": {"model": "x\x00"}}, ["tags.model", "NUL"]),
    ("nul-in-node", {"nodes": ["n1", "n\x002"]}, ["nodes.1", "NUL"]),
    ("nul-in-comment", {"comment": "model=a\x00"}, ["comment", "NUL"]),
]


@pytest.mark.parametrize(("name", "fields", "words"), BAD_EVENTS,
                         ids=[case[0] for case in BAD_EVENTS])
def test_bad_event_is_422_naming_the_problem(client, db_url, db_snapshot, name, fields, words):
    assert send(client, event("start", T0, user="alice")).status_code == 200
    before = db_snapshot(db_url)
    response = send(client, {**event("start", T0), **fields})
    assert response.status_code == 422, response.text
    for word in words:
        assert word in response.json()["detail"], response.text
    assert db_snapshot(db_url) == before


def test_nodes_and_gpus_merge_as_sets_and_are_capped(client, db_url, db_snapshot):
    """Nodes and GPUs merge without repeats; an event taking a job past a cap is refused."""
    from jobenergy.core.schema import MAX_JOB_GPUS, MAX_JOB_NODES

    half = MAX_JOB_NODES // 2 + 1
    first = [f"a{i}" for i in range(half)]
    second = [f"b{i}" for i in range(half)]
    assert send(client, event("start", T0, nodes=first + first[:10])).status_code == 200
    assert send(client, event("start", T0, nodes=first[:10])).status_code == 200
    assert job_row(db_snapshot, db_url)["nodes"] == first
    before = db_snapshot(db_url)
    response = send(client, event("start", T0, nodes=second))
    assert response.status_code == 422, response.text
    assert f"at most {MAX_JOB_NODES}" in response.json()["detail"]
    assert "nodes" in response.json()["detail"]
    assert db_snapshot(db_url) == before

    gpus = [str(i) for i in range(MAX_JOB_GPUS)]
    assert send(client, event("start", T0, gpus=gpus[:10])).status_code == 200
    assert send(client, event("start", T0, gpus=gpus)).status_code == 200  # a superset
    assert job_row(db_snapshot, db_url)["gpus"] == gpus
    response = send(client, event("start", T0, gpus=["one-more"]))
    assert response.status_code == 422 and "gpus" in response.json()["detail"]
    assert job_row(db_snapshot, db_url)["gpus"] == gpus


def test_tags_are_capped_per_job(client, db_url, db_snapshot):
    """Event tags past the cap are refused; comment tags only fill the room that is left."""
    from jobenergy.collector.events import MAX_TAGS

    own = {f"k{i}": "v" for i in range(MAX_TAGS - 1)}
    assert send(client, event("start", T0, tags=own)).status_code == 200
    response = send(client, event("start", T0, tags={"x": "1", "y": "2"}))
    assert response.status_code == 422 and f"at most {MAX_TAGS}" in response.json()["detail"]
    assert job_row(db_snapshot, db_url)["tags"] == own
    # A known key may change; of the comment's new keys only one still fits.
    response = send(client, event("start", T0, tags={"k0": "w"}, comment="model=a c=1 d=2"))
    assert response.status_code == 200, response.text
    row = job_row(db_snapshot, db_url)
    assert len(row["tags"]) == MAX_TAGS
    assert row["tags"]["k0"] == "w" and row["tags"]["model"] == "a" and row["model"] == "a"
    assert "c" not in row["tags"] and "d" not in row["tags"]


def sacct_event(kind: str, time: datetime, **fields) -> dict:
    """An event as ``jobenergy slurm sync`` posts it (from sacct)."""
    return event(kind, time, source="sacct", **fields)


def test_a_late_epilog_end_does_not_overwrite_the_syncs_times(client, db_url, db_snapshot):
    """Issue 11: the node epilog's end event can arrive after the sync posted sacct's times;
    sacct's start, end, state, exit code and nodes stay; the epilog only fills the unknown."""
    assert send(client, event("start", T0 + timedelta(seconds=1), nodes=["n1"])).status_code == 200
    slurm = {"nodes": ["n1", "n2"], "user": "alice", "alloc_tres": "billing=2,cpu=2,node=2",
             "tags": {"array_job_id": "40", "array_task_id": "2"}}
    assert send(client, sacct_event("start", T0, **slurm)).status_code == 200
    end = sacct_event("end", T0 + timedelta(seconds=60), state="CANCELLED", exit_code="0:15",
                      kill_requid=1000, steps=[{"id": "batch", "name": "batch"},
                                               {"id": "0", "name": "hostname"}], **slurm)
    assert send(client, end).status_code == 200
    late = event("end", T0 + timedelta(seconds=65), exit_code="0:0", nodes=["n3"],
                 user="mallory", comment="model=x", tags={"array_job_id": "99",
                                                          "array_task_id": "9"})
    response = send(client, late)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "CANCELLED"
    row = job_row(db_snapshot, db_url)
    assert (row["start_at"], row["end_at"]) == (T0, T0 + timedelta(seconds=60))
    assert (row["state"], row["exit_code"], row["kill_requid"]) == ("CANCELLED", "0:15", 1000)
    assert row["nodes"] == ["n1", "n2"] and row["user"] == "alice"
    assert (row["array_job_id"], row["array_task_id"]) == ("40", 2)
    assert row["alloc_tres"] == "billing=2,cpu=2,node=2"
    assert row["slurm_steps"] == [{"id": "batch", "name": "batch"},
                                  {"id": "0", "name": "hostname"}]
    assert row["synced_at"] is not None
    assert row["comment"] == "model=x"  # unknown until then: filled


def test_the_sync_overwrites_what_the_hooks_said(client, db_url, db_snapshot):
    """Events from the sync are authoritative whatever came first; a hook's end that
    contradicts sacct's start gives way to sacct's own end."""
    assert send(client, event("start", T0 + timedelta(seconds=5), nodes=["n9"],
                              tags={"array_job_id": "7", "array_task_id": "1"})).status_code == 200
    assert send(client, event("end", T0 + timedelta(seconds=6), exit_code=1)).status_code == 200
    assert job_row(db_snapshot, db_url)["state"] == "FAILED"
    # sacct says the job started at +10 s, after the hooks' end (clocks apart): no 422.
    assert send(client, sacct_event("start", T0 + timedelta(seconds=10),
                                    nodes=["n1"])).status_code == 200
    assert send(client, sacct_event("end", T0 + timedelta(seconds=30), state="COMPLETED",
                                    exit_code="0:0", nodes=["n1"])).status_code == 200
    row = job_row(db_snapshot, db_url)
    assert (row["start_at"], row["end_at"]) == (T0 + timedelta(seconds=10),
                                                T0 + timedelta(seconds=30))
    assert (row["state"], row["exit_code"], row["nodes"]) == ("COMPLETED", "0:0", ["n1"])
    # sacct gave no array ids: the hooks' (a user can set any tag) are cleared.
    assert (row["array_job_id"], row["array_task_id"]) == (None, None)


def test_hooks_alone_keep_their_last_word_and_fill_slurm_ids(client, db_url, db_snapshot):
    """Without the sync, hooks' events behave as before, and give the array / het ids."""
    tags = {"het_job_id": "11", "het_job_offset": "1", "array_job_id": "x1", "array_task_id": "2"}
    assert send(client, event("start", T0, tags=tags)).status_code == 200
    assert send(client, event("end", T0 + timedelta(seconds=5))).status_code == 200
    assert send(client, event("end", T0 + timedelta(seconds=7), state="TIMEOUT")).status_code == 200
    row = job_row(db_snapshot, db_url)
    assert (row["end_at"], row["state"], row["synced_at"]) == (
        T0 + timedelta(seconds=7), "TIMEOUT", None)
    assert (row["het_job_id"], row["het_job_offset"]) == ("11", 1)
    assert (row["array_job_id"], row["array_task_id"]) == (None, None)  # "x1": not Slurm's


def test_an_unknown_source_is_refused(client, db_url, db_snapshot):
    response = send(client, event("start", T0, source="scontrol"))
    assert response.status_code == 422 and "source" in response.json()["detail"]
