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


def _recent_fleet(session, rng: random.Random, now: datetime, n: int = 300) -> None:
    """``n`` jobs started over the last 40 days (2 clusters, 3 models, 3 phases)."""
    from jobenergy.collector.models import Job

    for i in range(n):
        begin = now - timedelta(minutes=rng.randrange(1, 40 * 24 * 60))
        energy = rng.randrange(10**6, 10**13)
        session.add(Job(
            cluster=("c1", "c2")[i % 2], job_id=f"r{i}", model=rng.choice(MODELS),
            phase=rng.choice(PHASES), energy_uj=energy, facility_uj=int(energy * 1.3),
            co2e_ug=energy // 7, gpu_s=rng.random() * 1000, samples=rng.randrange(1, 10**6),
            begin_at=begin, start_at=begin, updated_at=now - timedelta(days=41),
            user=rng.choice(("alice", "bob", "carol", None)),
            account=rng.choice(("physics", "chem", None)),
            partition=rng.choice(("gpu", "cpu")), gpu_uj=energy // 2))
    session.commit()


def test_rolling_windows_are_the_live_leaderboards_of_their_span(db_url):
    """24h/7d/30d materialised: each is the live leaderboard of ``[as_of - period, as_of)``
    exactly, recomputed once ``every`` old even when no job changed (jobs age out)."""
    from sqlalchemy.orm import Session

    from jobenergy.api.leaderboards import Window, all_time_totals, window_totals
    from jobenergy.collector import rollups
    from jobenergy.collector.db import make_engine

    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            _recent_fleet(session, random.Random(3), datetime.now(UTC))
            # Never computed: a period asked from the roll-up is answered live.
            live_now = _board(session, Window(period="7d"), "rollup")
            assert live_now and all(r["source"] == "live" for r in live_now.values())
        result = rollups.refresh(engine, all_time_totals, window_totals=window_totals)
        assert result is not None and result.computed and result.windows
        with Session(engine) as session:
            counts = {}
            for period, length in rollups.PERIODS.items():
                for cluster in (None, "c1", "c2"):
                    for phase in (None, "training"):
                        rolled = _board(session, Window(cluster=cluster, phase=phase,
                                                        period=period), "rollup")
                        as_of = {r["as_of"] for r in rolled.values()}
                        assert len(as_of) <= 1
                        end = as_of.pop() if as_of else None
                        if end is None:  # nothing started in it: no rows either way
                            assert not _board(session, Window(
                                cluster=cluster, phase=phase, period=period), "live")
                            continue
                        live = _board(session, Window(cluster=cluster, phase=phase,
                                                      start=end - length, end=end), "live")
                        _same(live, rolled)
                counts[period] = sum(r["jobs"] for r in _board(
                    session, Window(period=period), "rollup").values())
            assert 0 < counts["24h"] < counts["7d"] < counts["30d"] < 300
        # Nothing changed and not yet due: neither is recomputed; due: the windows are.
        again = rollups.refresh(engine, all_time_totals, window_totals=window_totals)
        assert again is not None and not again.computed and not again.windows
        aged = rollups.refresh(engine, all_time_totals, every=timedelta(0),
                               window_totals=window_totals)
        assert aged is not None and not aged.computed and aged.windows
    finally:
        engine.dispose()


def test_api_period_leaderboard(client):
    """``period`` is one of the windows, not with start or end; answered live until computed."""
    ok = client.get("/api/v1/leaderboards/models", params={"period": "7d", "source": "rollup"})
    assert ok.status_code == 200 and ok.json() == []
    for params in ({"period": "7d", "start": "now-1days"}, {"period": "2w"}):
        bad = client.get("/api/v1/leaderboards/models", params=params)
        assert bad.status_code == 422, (params, bad.text)


def test_materialised_summaries_are_the_live_ones(db_url):
    """Every summary (all time and each rolling window, each scope, phase filter and
    group_by) from the materialisation equals the live one over the same span."""
    from sqlalchemy.orm import Session

    from jobenergy.api.leaderboards import (
        GROUPS,
        Window,
        all_time_totals,
        summary,
        summary_answer,
        window_totals,
    )
    from jobenergy.collector import rollups
    from jobenergy.collector.db import make_engine

    assert set(GROUPS) == set(rollups.SUMMARY_GROUPS)
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            _recent_fleet(session, random.Random(5), datetime.now(UTC))
            rows, as_of = summary_answer(session, Window(), "user", "rollup")
            assert rows and as_of is None  # never computed: live
        assert rollups.refresh(engine, all_time_totals,
                               window_totals=window_totals).windows  # type: ignore[union-attr]
        checked = 0
        with Session(engine) as session:
            for period in (None, *rollups.PERIODS):
                for cluster in (None, "c1"):
                    for phase in (None, "inference"):
                        for group_by in GROUPS:
                            window = Window(cluster=cluster, phase=phase, period=period)
                            rolled, end = summary_answer(session, window, group_by, "rollup")
                            assert end is not None
                            span = (Window(cluster=cluster, phase=phase) if period is None
                                    else Window(cluster=cluster, phase=phase,
                                                start=end - rollups.PERIODS[period], end=end))
                            live = summary(session, span, group_by)
                            assert [r["group"] for r in rolled] == [r["group"] for r in live]
                            for got, want in zip(rolled, live, strict=True):
                                assert got["jobs"] == want["jobs"]
                                for key in want:
                                    if key not in ("group", "jobs"):
                                        assert got[key] == pytest.approx(want[key], rel=1e-12)
                            checked += len(live)
        assert checked > 100
    finally:
        engine.dispose()


def test_api_summary_period_and_source(client):
    rows = client.get("/api/v1/summary", params={"period": "30d", "source": "rollup"})
    assert rows.status_code == 200 and rows.json() == []
    for params in ({"period": "30d", "end": "now"}, {"period": "1y"}, {"source": "cache"}):
        bad = client.get("/api/v1/summary", params=params)
        assert bad.status_code == 422, (params, bad.text)


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)  # the advisory lock is PostgreSQL's
def test_the_lock_is_not_held_in_an_idle_transaction(db_url):
    """While the leaderboard is computed, the session that holds the refresh's lock is idle,
    not idle in a transaction (which idle_in_transaction_session_timeout would end)."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from jobenergy.api.leaderboards import all_time_totals
    from jobenergy.collector import rollups
    from jobenergy.collector.db import make_engine

    engine = make_engine(db_url)
    states: list[str] = []

    def totals(conn, cluster):
        with engine.connect() as watcher:
            states.extend(watcher.execute(text(
                "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted")).scalars())
        return all_time_totals(conn, cluster)

    try:
        with Session(engine) as session:
            _fleet(session, random.Random(5), n=20)
        assert rollups.refresh(engine, totals).computed  # type: ignore[union-attr]
    finally:
        engine.dispose()
    assert states and set(states) == {"idle"}
