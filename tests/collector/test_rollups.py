"""The materialised all-time leaderboard answers as the live query does, exactly, as of its
last computation (``collector/rollups.py``)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from jobenergy.core.units import UJ_PER_KWH

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
MODELS = ("llama", "bert", "resnet")
PHASES = ("training", "inference", None)


def _fleet(session, rng: random.Random, n: int = 240) -> None:
    """``n`` jobs over 6 days (2 clusters, 3 models, 3 phases), some annotated, some undated."""
    from jobenergy.collector.models import Job, JobBoardPart

    for i in range(n):
        cluster = ("c1", "c2")[i % 2]
        energy = rng.randrange(10**6, 10**13)
        begin = None if i % 37 == 0 else T0 + timedelta(minutes=rng.randrange(6 * 24 * 60))
        annotated = i % 5 == 0
        session.add(Job(
            cluster=cluster, job_id=str(i), model=rng.choice(MODELS), phase=rng.choice(PHASES),
            energy_uj=energy, facility_uj=int(energy * 1.3), co2e_ug=energy // 7,
            gpu_s=rng.random() * 1000, samples=rng.choice((None, rng.randrange(1, 10**6))),
            annotated=annotated, begin_at=begin, start_at=begin, updated_at=T0,
        ))
        if annotated:
            # Two parts: an annotated phase of another model, and the rest.
            first = energy // 3
            for model, phase, part_uj, part_samples in (
                    (rng.choice(MODELS), "inference", first, 100),
                    (rng.choice(MODELS), "", energy - first, None)):
                session.add(JobBoardPart(
                    cluster=cluster, job_id=str(i), model=model, phase=phase,
                    energy_uj=part_uj, sampled_uj=part_uj if part_samples else 0,
                    samples=part_samples, gpu_s=1.0))
    session.commit()


def _board(session, window, source):
    from jobenergy.api.leaderboards import model_leaderboard

    rows = model_leaderboard(session, window, "total_energy_kwh", True, 1000, source)
    return {(r["model"], r["phase"]): r for r in rows}


def _same(live, rolled):
    assert set(rolled) == set(live)
    for key, row in live.items():
        got = rolled[key]
        assert row["source"] == "live" and row["as_of"] is None
        assert got["source"] == "rollup" and got["as_of"] is not None
        for name, value in row.items():
            if name in ("source", "as_of"):
                continue
            if value is None or isinstance(value, str):
                assert got[name] == value, (key, name)
            else:
                assert got[name] == pytest.approx(value, rel=1e-12), (key, name)


def test_materialised_leaderboard_is_the_live_one(db_url):
    from sqlalchemy.orm import Session

    from jobenergy.api.leaderboards import Window, all_time_totals
    from jobenergy.collector import rollups
    from jobenergy.collector.db import make_engine

    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            # Never computed: asked for, it is answered live.
            assert all(r["source"] == "live" for r in _board(session, Window(), "rollup").values())
            _fleet(session, random.Random(7))
        result = rollups.refresh(engine, all_time_totals)
        assert result is not None and result.computed
        with Session(engine) as session:
            for window in (Window(), Window(cluster="c1"), Window(cluster="c2"),
                           Window(phase="training"), Window(cluster="c2", phase="inference")):
                _same(_board(session, window, "live"), _board(session, window, "rollup"))
            # A window, or a caller who counts only some jobs: always live.
            windowed = _board(session, Window(start=T0 + timedelta(days=2)), "rollup")
            assert windowed and all(r["source"] == "live" for r in windowed.values())
            # auto: live on a small database.
            assert all(r["source"] == "live" for r in _board(session, Window(), "auto").values())
    finally:
        engine.dispose()


def test_recomputed_only_when_jobs_changed_and_due(db_url):
    """Until recomputed, a changed job is counted as it was, and ``as_of`` says since when."""
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from jobenergy.api.leaderboards import Window, all_time_totals
    from jobenergy.collector import rollups
    from jobenergy.collector.db import make_engine
    from jobenergy.collector.models import Job

    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            _fleet(session, random.Random(11), n=60)
        assert rollups.refresh(engine, all_time_totals).computed  # type: ignore[union-attr]
        # Nothing changed: not recomputed, however due.
        unchanged = rollups.refresh(engine, all_time_totals, every=timedelta(0))
        assert unchanged is not None and not unchanged.computed
        changed_at = datetime.now(UTC)
        with Session(engine) as session:
            before = _board(session, Window(), "rollup")
            session.execute(update(Job).where(Job.cluster == "c1", Job.job_id == "2")
                            .values(energy_uj=Job.energy_uj + 10**12, updated_at=changed_at))
            session.commit()
        # Changed, but not due yet: the leaderboard stays as it was.
        assert not rollups.refresh(engine, all_time_totals).computed  # type: ignore[union-attr]
        with Session(engine) as session:
            stale = _board(session, Window(), "rollup")
            assert stale == before and all(r["as_of"] < changed_at for r in stale.values())
            live = _board(session, Window(), "live")
            gap = sum(r["total_energy_kwh"] for r in live.values()) - sum(
                r["total_energy_kwh"] for r in stale.values())
            assert round(gap * UJ_PER_KWH) == 10**12
        assert rollups.refresh(engine, all_time_totals,
                               every=timedelta(0)).computed  # type: ignore[union-attr]
        with Session(engine) as session:
            fresh = _board(session, Window(), "rollup")
            _same(_board(session, Window(), "live"), fresh)
            assert all(r["as_of"] >= changed_at - rollups.SLACK for r in fresh.values())
    finally:
        engine.dispose()


def test_api_says_where_the_leaderboard_comes_from(client):
    """``source=rollup`` before any computation is answered live; the route validates it."""
    rows = client.get("/api/v1/leaderboards/models", params={"source": "rollup"})
    assert rows.status_code == 200 and rows.json() == []
    bad = client.get("/api/v1/leaderboards/models", params={"source": "cache"})
    assert bad.status_code == 422
