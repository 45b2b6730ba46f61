"""Phases in the job JSON, model leaderboards and summaries (GROUP BY over job summaries)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest

from jobenergy.core.schema import Interval, JobSample, PhaseRecord
from jobenergy.core.units import UJ_PER_J, UJ_PER_KWH

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SOURCES = [("cpu", "package-0"), ("gpu", "gpu/GPU-aaaa")]


def post(client, path, **kwargs):
    response = client.post(path, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def with_phases(batch, job_id, phases, records=()):
    """Label interval i of ``batch`` with ``phases[i]`` (phase, model) and add phase records."""
    intervals = []
    for i, interval in enumerate(batch.intervals):
        phase, model = phases[i]
        jobs = [JobSample(job_id=job_id, uid=1000, phase=phase, model=model)]
        extra = [r for r in records if r[0] == i]
        intervals.append(Interval(
            start=interval.start, end=interval.end, sources=interval.sources, jobs=jobs,
            phases=[PhaseRecord(job_id=job_id, **r[1]) for r in extra],
        ))
    return batch.model_copy(update={"intervals": intervals})


def test_phases_in_job_json(client, make_batch):
    batch = make_batch(jobs={"7": 1}, unattributed_weight=0, sources=SOURCES, n_intervals=4)
    labelled = with_phases(
        batch, "7",
        [("training", "resnet50"), ("training", "resnet50"), ("inference", "resnet50"),
         (None, None)],
        records=[(1, {"phase": "training", "model": "resnet50", "start": T0,
                      "end": T0 + timedelta(seconds=20), "samples": 1000,
                      "metrics": {"accuracy": 0.7}}),
                 (2, {"phase": "inference", "model": "resnet50", "start": T0 + timedelta(
                     seconds=20), "end": T0 + timedelta(seconds=30), "samples": 500,
                     "metrics": {"latency_ms": 3.5}})],
    )
    post(client, "/api/v1/batches", content=labelled.model_dump_json())
    out = client.get("/api/v1/jobs/7").json()

    def energy(indexes):
        return sum(src.jobs_uj["7"] for i in indexes for src in batch.intervals[i].sources)

    phases = {p["phase"]: p for p in out["phases"]}
    assert set(phases) == {"training", "inference"}
    train = phases["training"]
    assert train["model"] == "resnet50" and train["energy_uj"] == energy([0, 1])
    assert train["samples"] == 1000 and train["metrics"] == {"accuracy": 0.7}
    assert train["j_per_sample"] == pytest.approx(energy([0, 1]) / UJ_PER_J / 1000)
    assert train["energy_kwh"] == pytest.approx(energy([0, 1]) / UJ_PER_KWH)
    assert phases["inference"]["energy_uj"] == energy([2])
    assert out["energy_uj"] == energy(range(4))
    assert (out["model"], out["phase"]) == ("resnet50", "training")  # first seen, no tags

    # A later record of the same phase adds samples and merges metrics; a retry changes nothing.
    more = make_batch(jobs={"7": 1}, unattributed_weight=0, sources=SOURCES, n_intervals=1,
                      seq=1, start=T0 + timedelta(seconds=40))
    more = with_phases(more, "7", [("training", "resnet50")], records=[
        (0, {"phase": "training", "model": "resnet50", "start": T0, "end": T0 + timedelta(
            seconds=50), "samples": 24, "metrics": {"accuracy": 0.8, "loss": 0.4}})])
    for _ in range(2):
        post(client, "/api/v1/batches", content=more.model_dump_json())
    train = {p["phase"]: p for p in client.get("/api/v1/jobs/7").json()["phases"]}["training"]
    assert train["samples"] == 1024 and train["metrics"] == {"accuracy": 0.8, "loss": 0.4}

    # Job tags (event) win over what annotations suggested.
    post(client, "/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "7", "event": "start", "time": T0.isoformat(),
        "comment": "model=resnet18 phase=inference note=x", "tags": {"model": "resnet152"}})
    out = client.get("/api/v1/jobs/7").json()
    assert (out["model"], out["phase"]) == ("resnet152", "inference")
    assert out["tags"] == {"model": "resnet152", "phase": "inference", "note": "x"}


@pytest.fixture
def fleet(client, make_batch):
    """Nine jobs of three models and two phases, with GPUs, one hour apart."""
    specs = []
    for i in range(9):
        model = ("llama", "bert", "resnet")[i % 3]
        phase = "training" if i < 6 else "inference"
        job_id = str(100 + i)
        start = T0 + timedelta(hours=i)
        batch = make_batch(jobs={job_id: 1}, unattributed_weight=0, sources=SOURCES,
                           node=f"n{i}", start=start, power_w=100.0 * (i + 1))
        post(client, "/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": start.isoformat(),
            "user": "alice" if i % 2 else "bob", "account": "ml",
            "tags": {"model": model, "phase": phase}})
        records = [(0, {"phase": phase, "model": model, "start": start,
                        "end": start + timedelta(seconds=30), "samples": 100 * (i + 1)})]
        batch = with_phases(batch, job_id, [(phase, model)] * 3, records)
        post(client, "/api/v1/batches", content=batch.model_dump_json())
        energy = sum(v for iv in batch.intervals for s in iv.sources for v in s.jobs_uj.values())
        specs.append({"job_id": job_id, "model": model, "phase": phase, "energy_uj": energy,
                      "samples": 100 * (i + 1), "start": start})
    return specs


def test_model_leaderboard(client, fleet):
    rows = client.get("/api/v1/leaderboards/models").json()
    by_key = {(r["model"], r["phase"]): r for r in rows}
    assert set(by_key) == {(m, p) for m in ("llama", "bert", "resnet")
                           for p in ("training", "inference")}
    llama = [s for s in fleet if s["model"] == "llama" and s["phase"] == "training"]
    row = by_key[("llama", "training")]
    total = sum(s["energy_uj"] for s in llama)
    assert row["jobs"] == 2
    assert row["total_energy_kwh"] == row["energy_kwh"] == pytest.approx(total / UJ_PER_KWH)
    assert row["median_energy_kwh"] == pytest.approx(
        statistics.median(s["energy_uj"] for s in llama) / UJ_PER_KWH)
    assert row["gpu_hours"] == pytest.approx(2 * 30 / 3600)
    assert row["kwh_per_gpu_hour"] == pytest.approx(total / UJ_PER_KWH / (60 / 3600))
    assert row["j_per_sample"] == pytest.approx(
        total / UJ_PER_J / sum(s["samples"] for s in llama))
    assert row["co2e_kg"] == pytest.approx(row["facility_energy_kwh"] * 0.475, rel=1e-6)
    totals = [r["total_energy_kwh"] for r in rows]
    assert totals == sorted(totals, reverse=True)

    infer = client.get("/api/v1/leaderboards/models",
                       params={"phase": "inference", "metric": "j_per_sample",
                               "order": "asc"}).json()
    assert {r["phase"] for r in infer} == {"inference"} and len(infer) == 3
    per_sample = [r["j_per_sample"] for r in infer]
    assert per_sample == sorted(per_sample)
    window = {"start": (T0 + timedelta(hours=3)).isoformat(),
              "end": (T0 + timedelta(hours=6)).isoformat()}
    rows = client.get("/api/v1/leaderboards/models", params=window).json()
    assert sum(r["jobs"] for r in rows) == 3
    assert client.get("/api/v1/leaderboards/models",
                      params={"metric": "bogus"}).status_code == 422
    assert client.get("/api/v1/leaderboards/models", params={"cluster": "none"}).json() == []


def test_summary(client, fleet):
    rows = client.get("/api/v1/summary", params={"group_by": "user"}).json()
    assert {r["group"] for r in rows} == {"alice", "bob"}
    assert sum(r["jobs"] for r in rows) == 9
    total = sum(s["energy_uj"] for s in fleet)
    assert sum(r["energy_kwh"] for r in rows) == pytest.approx(total / UJ_PER_KWH)
    assert rows[0]["energy_kwh"] >= rows[1]["energy_kwh"]
    by_model = {r["group"]: r for r in client.get(
        "/api/v1/summary", params={"group_by": "model", "start": T0.isoformat(),
                                   "end": (T0 + timedelta(hours=3)).isoformat()}).json()}
    assert {k: v["jobs"] for k, v in by_model.items()} == {"llama": 1, "bert": 1, "resnet": 1}
    assert client.get("/api/v1/summary", params={"group_by": "node"}).status_code == 422


def test_leaderboard_medians_exact(db_url, monkeypatch):
    """Medians of odd and even groups, ties and a NULL phase, on both backends and, on
    PostgreSQL, by the per-model UNION ALL (which needs the visibility map set by VACUUM)."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from jobenergy.api import leaderboards
    from jobenergy.api.leaderboards import Window, _leaderboard_stmt, model_leaderboard
    from jobenergy.collector.db import make_engine
    from jobenergy.collector.models import Job

    groups = {
        ("a", "training"): [5, 1, 3], ("a", "inference"): [4, 1, 3, 10],
        ("b", "training"): [7, 7, 7, 2], ("b", None): [9, 2], ("c", "training"): [6],
    }
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            n = 0
            for (model, phase), energies in groups.items():
                for energy in energies:
                    n += 1
                    session.add(Job(cluster="c1" if n % 2 else "c2", job_id=str(n), model=model,
                                    phase=phase, energy_uj=energy * 10**9, updated_at=T0,
                                    begin_at=T0 + timedelta(hours=n)))
            session.add(Job(cluster="c1", job_id="none", energy_uj=10**15, updated_at=T0))
            session.commit()
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            # The test database is not vacuumed: take the per-model branches regardless.
            monkeypatch.setattr(leaderboards, "_MODELS_SQL", text(
                leaderboards._MODELS_SQL.text.replace(leaderboards._ALL_VISIBLE, "TRUE")))
        with Session(engine) as session:
            if postgres:
                stmt = _leaderboard_stmt(session, Window(), True)
                assert "UNION ALL" in str(stmt)
            for window in (Window(), Window(phase="training"), Window(cluster="c1"),
                           Window(start=T0 + timedelta(hours=3))):
                rows = model_leaderboard(session, window, "median_energy_kwh", True, 100)
                expected = {}
                n = 0
                for key, energies in groups.items():
                    kept = []
                    for energy in energies:
                        n += 1
                        cluster = "c1" if n % 2 else "c2"
                        if ((window.phase is None or key[1] == window.phase)
                                and (window.cluster is None or cluster == window.cluster)
                                and (window.start is None or n >= 3)):
                            kept.append(energy * 10**9)
                    if kept:
                        expected[key] = (len(kept), statistics.median(kept))
                got = {(r["model"], r["phase"]): (r["jobs"], r["median_energy_kwh"] * UJ_PER_KWH)
                       for r in rows}
                assert set(got) == set(expected), window
                for key, (jobs, median) in expected.items():
                    assert got[key][0] == jobs
                    assert got[key][1] == pytest.approx(median, rel=1e-12), (window, key)
    finally:
        engine.dispose()


def job_energy(batch, job_id, indexes=None):
    return sum(src.jobs_uj.get(job_id, 0) for i, interval in enumerate(batch.intervals)
               if indexes is None or i in indexes for src in interval.sources)


@pytest.fixture
def annotated(client, make_batch):
    """Job 56 tagged resnet50/training for the whole job (SPANK) that annotated training
    (intervals 0-1, 1000 samples) and inference (interval 2, 500 samples), interval 3 not
    annotated; job 57, resnet50/training, no annotations."""
    b56 = make_batch(jobs={"56": 1}, unattributed_weight=0, sources=SOURCES, n_intervals=4)
    b56 = with_phases(
        b56, "56",
        [("training", "resnet50"), ("training", None), ("inference", "resnet50"), (None, None)],
        records=[(1, {"phase": "training", "model": "resnet50", "start": T0,
                      "end": T0 + timedelta(seconds=20), "samples": 1000}),
                 (2, {"phase": "inference", "model": "resnet50",
                      "start": T0 + timedelta(seconds=20), "end": T0 + timedelta(seconds=30),
                      "samples": 500})],
    )
    b57 = make_batch(jobs={"57": 1}, unattributed_weight=0, sources=SOURCES, n_intervals=2,
                     node="n2", power_w=300.0)
    for job_id in ("56", "57"):
        post(client, "/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": T0.isoformat(),
            "tags": {"model": "resnet50", "phase": "training"}})
    post(client, "/api/v1/batches", content=b56.model_dump_json())
    post(client, "/api/v1/batches", content=b57.model_dump_json())
    return b56, b57


def test_leaderboard_counts_annotated_phases(client, annotated):
    b56, b57 = annotated
    train_56 = job_energy(b56, "56", {0, 1})  # "training" with no model: the job's model
    infer_56 = job_energy(b56, "56", {2})
    rest_56 = job_energy(b56, "56", {3})  # not annotated: the job-level training tag
    whole_57 = job_energy(b57, "57")
    rows = {(r["model"], r["phase"]): r for r in
            client.get("/api/v1/leaderboards/models").json()}
    assert set(rows) == {("resnet50", "training"), ("resnet50", "inference")}

    infer = rows[("resnet50", "inference")]
    assert infer["jobs"] == 1 and infer["samples"] == 500
    assert infer["total_energy_kwh"] == pytest.approx(infer_56 / UJ_PER_KWH, rel=1e-12)
    assert infer["j_per_sample"] == pytest.approx(infer_56 / UJ_PER_J / 500, rel=1e-12)
    assert infer["gpu_hours"] == pytest.approx(10 / 3600)  # one GPU, one 10 s interval

    train = rows[("resnet50", "training")]
    assert train["jobs"] == 2 and train["samples"] == 1000
    total = train_56 + rest_56 + whole_57
    assert train["total_energy_kwh"] == pytest.approx(total / UJ_PER_KWH, rel=1e-12)
    # J/sample: the annotated training energy over its samples, nothing else mixed in.
    assert train["j_per_sample"] == pytest.approx(train_56 / UJ_PER_J / 1000, rel=1e-12)
    assert train["median_energy_kwh"] == pytest.approx(
        statistics.median([train_56 + rest_56, whole_57]) / UJ_PER_KWH, rel=1e-12)
    assert train["gpu_hours"] == pytest.approx((30 + 20) / 3600)

    # Facility energy and CO2e are the jobs', shared by energy: nothing lost or doubled.
    jobs = {j["job_id"]: j for j in client.get("/api/v1/jobs").json()["jobs"]}
    assert sum(r["facility_energy_kwh"] for r in rows.values()) == pytest.approx(
        sum(j["facility_energy_kwh"] for j in jobs.values()), rel=1e-9)
    assert sum(r["co2e_kg"] for r in rows.values()) == pytest.approx(
        sum(j["co2e_kg"] for j in jobs.values()), rel=1e-6)

    only = client.get("/api/v1/leaderboards/models", params={"phase": "inference"}).json()
    assert [(r["model"], r["phase"], r["jobs"]) for r in only] == [("resnet50", "inference", 1)]
    assert only[0]["total_energy_kwh"] == pytest.approx(infer_56 / UJ_PER_KWH, rel=1e-12)

    # A later job-level tag moves the un-annotated rest, not the annotated phases.
    post(client, "/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "56", "event": "end", "time": (T0 + timedelta(
            seconds=40)).isoformat(), "tags": {"phase": "inference"}})
    rows = {(r["model"], r["phase"]): r for r in
            client.get("/api/v1/leaderboards/models").json()}
    assert rows[("resnet50", "inference")]["total_energy_kwh"] == pytest.approx(
        (infer_56 + rest_56) / UJ_PER_KWH, rel=1e-12)
    assert rows[("resnet50", "inference")]["j_per_sample"] == pytest.approx(
        infer_56 / UJ_PER_J / 500, rel=1e-12)
    assert rows[("resnet50", "training")]["total_energy_kwh"] == pytest.approx(
        (train_56 + whole_57) / UJ_PER_KWH, rel=1e-12)
    assert rows[("resnet50", "training")]["jobs"] == 2


def test_later_batches_of_an_annotated_job_move_its_parts(client, annotated, make_batch):
    b56, _ = annotated
    more = make_batch(jobs={"56": 1}, unattributed_weight=0, sources=SOURCES, n_intervals=1,
                      seq=1, start=T0 + timedelta(seconds=40))
    post(client, "/api/v1/batches", content=more.model_dump_json())  # not annotated
    # A batch without phases still moves the parts of a job annotated by an earlier one.
    energy_57 = client.get("/api/v1/jobs/57").json()["energy_uj"]
    rows = {(r["model"], r["phase"]): r for r in
            client.get("/api/v1/leaderboards/models").json()}
    assert rows[("resnet50", "training")]["total_energy_kwh"] == pytest.approx(
        (job_energy(b56, "56", {0, 1, 3}) + job_energy(more, "56") + energy_57) / UJ_PER_KWH,
        rel=1e-12)
    more_2 = make_batch(jobs={"56": 1}, unattributed_weight=0, sources=SOURCES, n_intervals=1,
                        seq=2, start=T0 + timedelta(seconds=50))
    more_2 = with_phases(more_2, "56", [("inference", "bert")])
    post(client, "/api/v1/batches", content=more_2.model_dump_json())
    rows = {(r["model"], r["phase"]): r for r in
            client.get("/api/v1/leaderboards/models").json()}
    assert rows[("bert", "inference")]["total_energy_kwh"] == pytest.approx(
        job_energy(more_2, "56") / UJ_PER_KWH, rel=1e-12)
    assert rows[("bert", "inference")]["j_per_sample"] is None  # no samples reported
    assert rows[("resnet50", "inference")]["total_energy_kwh"] == pytest.approx(
        job_energy(b56, "56", {2}) / UJ_PER_KWH, rel=1e-12)
    assert rows[("resnet50", "training")]["total_energy_kwh"] == pytest.approx(
        (job_energy(b56, "56", {0, 1, 3}) + job_energy(more, "56") + energy_57) / UJ_PER_KWH,
        rel=1e-12)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # a PostgreSQL plan only
def test_leaderboard_per_model_branches_agree(client, annotated, db_url, monkeypatch,
                                              make_batch):
    """On PostgreSQL the per-model UNION ALL (a model with board parts, one without) and the
    single GROUP BY give the same rows."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from jobenergy.api import leaderboards
    from jobenergy.api.leaderboards import Window, model_leaderboard
    from jobenergy.collector.db import make_engine

    post(client, "/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "58", "event": "start", "time": T0.isoformat(),
        "tags": {"model": "vgg", "phase": "inference"}})
    post(client, "/api/v1/batches", content=make_batch(
        jobs={"58": 1}, node="n3", sources=SOURCES).model_dump_json())
    monkeypatch.setattr(leaderboards, "_MODELS_SQL", text(
        leaderboards._MODELS_SQL.text.replace(leaderboards._ALL_VISIBLE, "TRUE")))
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            sql = str(leaderboards._leaderboard_stmt(session, Window(), True))
            assert sql.count("UNION ALL") == 2  # the branches, and resnet50's parts
            branches = model_leaderboard(session, Window(), "total_energy_kwh", True, 100)
        with Session(engine) as session:  # one GROUP BY for vgg, one over resnet50's parts
            split = model_leaderboard(session, Window(cluster="c1"), "total_energy_kwh", True,
                                      100)
        monkeypatch.setattr(leaderboards, "MAX_MODEL_BRANCHES", 0)
        with Session(engine) as session:
            single = model_leaderboard(session, Window(), "total_energy_kwh", True, 100)
    finally:
        engine.dispose()
    assert [(r["model"], r["phase"]) for r in branches] == [
        (r["model"], r["phase"]) for r in single] and len(single) == 3
    for rows in (branches, split):
        for got, want in zip(rows, single, strict=True):
            assert got == {k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v
                           for k, v in want.items()}
