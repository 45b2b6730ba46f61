"""Power series of jobs, nodes and clusters (``api/routes_series.py``).

Energy-exact: on irregular intervals that cross bucket edges (hypothesis), every line's
buckets are what a naive per-interval apportionment of the posted batches gives, add up to the
line exactly, and the lines add up to the job's energy of ``GET /api/v1/jobs/{id}`` and to the
node totals of ``GET /api/v1/nodes``. Then bounds, retention, factors, access and bad input.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from jobenergy.api.power_series import (
    MAX_POINTS,
    US_PER_S,
    Line,
    Lines,
    epoch_us,
    make_grid,
    parse_step,
)
from jobenergy.api.series_queries import node_hour_lines, node_lines
from jobenergy.collector.models import (
    IntervalRetention,
    JobEnergyHour,
    NodeEnergy,
    NodeEnergyHour,
)
from jobenergy.core.schema import Batch, Interval, JobSample, SourceEnergy
from jobenergy.core.split import split_uj

#: Deliberately off the second: intervals cross bucket edges at any step.
T0 = datetime(2026, 11, 23, 10, 0, 0, 123_457, tzinfo=UTC)
SOURCES = (("cpu", "package-0"), ("gpu", "gpu/GPU-a"), ("psys", "psys"))
_clusters = itertools.count()

# ---------------------------------------------------------------------------------------------
# Scenarios: what the posted batches hold, as (start µs, end µs, µJ) per line.

Share = tuple[int, int, int]


class Scenario:
    """Posted batches and, per line, the shares they stored."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.batches: list[Batch] = []
        # (node, component, source, job_id or None) -> shares
        self.shares: dict[tuple[str, str, str, str | None], list[Share]] = defaultdict(list)

    def job_lines(self, job_id: str) -> dict[tuple[str, str, str], list[Share]]:
        return {k[:3]: v for k, v in self.shares.items() if k[3] == job_id}

    def span_us(self) -> tuple[int, int]:
        every = [s for v in self.shares.values() for s in v]
        return min(s for s, _, _ in every), max(e for _, e, _ in every)


def reference(shares: list[Share], first: int, count: int, step_s: int
              ) -> tuple[list[int], list[bool]]:
    """Buckets of a line, the naive way: each interval split over every bucket it touches."""
    step = step_s * US_PER_S
    energy, covered = [0] * count, [False] * count
    for start, end, uj in shares:
        weights = {}
        bucket = start // step
        while bucket * step < end:
            weights[bucket] = min(end, (bucket + 1) * step) - max(start, bucket * step)
            bucket += 1
        for bucket, part in split_uj(uj, weights).items():
            if 0 <= bucket - first < count:
                energy[bucket - first] += part
                covered[bucket - first] = True
    return energy, covered


@st.composite
def scenario_specs(draw: Any) -> dict[str, Any]:
    """Per node: intervals (gap µs, length µs) and per interval and source the energy and the
    weights of job 101 (both nodes), job 102 (n1 only) and the unattributed share."""
    nodes = {}
    for node in ("n1", "n2"):
        intervals = []
        for _ in range(draw(st.integers(1, 7))):
            gap = draw(st.sampled_from([0, 0, 1, 250_000, 7_000_001, 400_000_000]))
            length = draw(st.one_of(st.integers(1, 3_000_000), st.integers(1, 900_000_000)))
            sources = []
            for _source in SOURCES:
                uj = draw(st.integers(0, min(10**10, 40_000 * length)))
                weights = (draw(st.integers(1, 3)), draw(st.integers(0, 3)),
                           draw(st.integers(0, 2)))
                sources.append((uj, weights))
            intervals.append((gap, length, sources))
        nodes[node] = (draw(st.integers(0, 5_000_000)), intervals)
    return nodes


def build(spec: dict[str, Any], cluster: str, t0: datetime = T0) -> Scenario:
    scenario = Scenario(cluster)
    for node, (offset, intervals) in spec.items():
        t = epoch_us(t0) + offset
        made = []
        for gap, length, sources in intervals:
            start, end = t + gap, t + gap + length
            t = end
            srcs, seen = [], set()
            for (component, source), (uj, (w101, w102, w_none)) in zip(SOURCES, sources,
                                                                          strict=True):
                weights: dict[str | None, int] = {}
                if component != "psys":
                    weights = {"101": w101, "102": w102 if node == "n1" else 0}
                    weights = {k: w for k, w in weights.items() if w}
                weights[None] = w_none if weights else 1
                parts = split_uj(uj, weights)
                rest = parts.pop(None)
                srcs.append(SourceEnergy(component=component, source=source, measured_uj=uj,
                                         jobs_uj=parts, unattributed_uj=rest))
                for job_id, part in parts.items():
                    scenario.shares[(node, component, source, job_id)].append((start, end, part))
                    seen.add(job_id)
                if rest or not parts:  # as ingest stores the node's share (plan.py)
                    scenario.shares[(node, component, source, None)].append((start, end, rest))
            made.append(Interval(
                start=_time(start), end=_time(end), sources=srcs,
                jobs=[JobSample(job_id=j, uid=1000) for j in sorted(seen)]))
        scenario.batches.append(Batch(schema_version=1, cluster=cluster, node=node,
                                      boot_id="b", seq=0, intervals=made))
    return scenario


def _time(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def post(client: Any, scenario: Scenario) -> None:
    for batch in scenario.batches:
        response = client.post("/api/v1/batches", content=batch.model_dump_json())
        assert response.status_code == 200, response.text


def get(client: Any, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    assert response.status_code == 200, response.text
    return response.json()


def check_grid(out: dict[str, Any]) -> tuple[int, int, int]:
    """Check the time axis; return (first bucket, count, step)."""
    step, t = out["step_s"], out["t"]
    assert 1 <= len(t) <= MAX_POINTS
    assert t == [t[0] + i * step for i in range(len(t))] and t[0] % step == 0
    assert out["start"] == _time(t[0] * US_PER_S).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert out["end"] == _time((t[-1] + step) * US_PER_S).strftime("%Y-%m-%dT%H:%M:%SZ")
    return t[0] // step, len(t), step


def check_line(line: dict[str, Any], shares: list[Share], grid: tuple[int, int, int]) -> None:
    first, count, step = grid
    energy, covered = reference(shares, first, count, step)
    assert line["bucket_energy_uj"] == energy
    assert sum(line["bucket_energy_uj"]) == line["energy_uj"]
    assert line["power_w"] == [e / (step * 1_000_000) if c else None
                               for e, c in zip(energy, covered, strict=True)]


STEPS = st.sampled_from([None, "1", "7", "10", "15s", "1m", "300", "1h"])


# No shrinking: each example posts batches; the failing example is printed as drawn.
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=scenario_specs(), step=STEPS, cut=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_series_are_energy_exact(client, spec, step, cut):
    scenario = build(spec, f"c{next(_clusters)}")
    post(client, scenario)
    cluster = scenario.cluster

    # The job over its life: every line exact, the lines add up to the job.
    out = get(client, "/api/v1/jobs/101/series", cluster=cluster, step=step)
    grid = check_grid(out)
    assert out["resolution"] == "interval" and (out["cluster"], out["job_id"]) == (cluster, "101")
    expected = scenario.job_lines("101")
    got = {(line["node"], line["component"], line["source"]): line for line in out["lines"]}
    assert set(got) == set(expected)
    for key, line in got.items():
        check_line(line, expected[key], grid)
        assert line["energy_uj"] == sum(uj for _, _, uj in expected[key])
    job = get(client, "/api/v1/jobs/101", cluster=cluster)
    assert out["energy_uj"] == sum(line["energy_uj"] for line in out["lines"]) == job["energy_uj"]
    if step is not None and out["step_s"] != parse_step(step):
        assert out["step_raised"] and out["requested_step_s"] == parse_step(step)
    lo, hi = min(s for v in expected.values() for s, _, _ in v), max(
        e for v in expected.values() for _, e, _ in v)
    assert grid[0] * grid[2] * US_PER_S <= lo and hi <= (grid[0] + grid[1]) * grid[2] * US_PER_S

    # A window inside the data: the buckets it covers, exactly as without the window.
    span_lo, span_hi = scenario.span_us()
    a, b = sorted(cut)
    ws = span_lo + int((span_hi - span_lo) * a)
    we = max(ws + 1, span_lo + int((span_hi - span_lo) * b))
    window = {"start": _time(ws).isoformat(), "end": _time(we).isoformat()}
    out = get(client, "/api/v1/jobs/101/series", cluster=cluster, step=step, **window)
    grid = check_grid(out)
    assert grid == (make_grid(ws, we, parse_step(step)).first, make_grid(
        ws, we, parse_step(step)).count, make_grid(ws, we, parse_step(step)).step_s)
    for line in out["lines"]:
        check_line(line, expected[(line["node"], line["component"], line["source"])], grid)

    # The node: measured = attributed + unattributed, bucket by bucket, each exact (hourly
    # data for steps of whole hours: the same buckets, split at ingest).
    out = get(client, "/api/v1/nodes/n1/series", cluster=cluster, step=step, **window)
    grid = check_grid(out)
    assert out["resolution"] == ("hour" if out["step_s"] % 3600 == 0 else "interval")
    lines = {(line["kind"], line["component"]): line for line in out["lines"]}
    assert {c for _, c in lines} == {c for c, _ in SOURCES}
    for component, source in SOURCES:
        keys = [k for k in scenario.shares if k[:3] == ("n1", component, source)]
        attributed = [s for k in keys if k[3] is not None for s in scenario.shares[k]]
        unattributed = scenario.shares[("n1", component, source, None)]
        # Both parts are 0 W, not gaps, wherever the node measured.
        _, measured_covered = reference(attributed + unattributed, *grid)
        for kind, shares in (("attributed", attributed), ("unattributed", unattributed)):
            energy, _ = reference(shares, *grid)
            assert lines[(kind, component)]["bucket_energy_uj"] == energy
            assert lines[(kind, component)]["power_w"] == [
                e / (grid[2] * 1_000_000) if c else None
                for e, c in zip(energy, measured_covered, strict=True)]
        measured = lines[("measured", component)]
        assert measured["bucket_energy_uj"] == [
            x + y for x, y in zip(lines[("attributed", component)]["bucket_energy_uj"],
                                  lines[("unattributed", component)]["bucket_energy_uj"],
                                  strict=True)]
        assert measured["energy_uj"] == sum(measured["bucket_energy_uj"])

    # Over all the data, a node's measured energy is its total of GET /api/v1/nodes.
    everything = {"start": _time(span_lo).isoformat(), "end": _time(span_hi).isoformat()}
    totals = {(r["node"], r["component"]): r["measured_uj"]
              for r in get(client, "/api/v1/nodes", cluster=cluster)["nodes"]}
    for node in ("n1", "n2"):
        out = get(client, f"/api/v1/nodes/{node}/series", cluster=cluster, step=step,
                  **everything)
        for line in out["lines"]:
            if line["kind"] == "measured":
                assert line["energy_uj"] == totals[(node, line["component"])]

    # The cluster: CPU and GPU of both nodes (psys overlaps them and is left out).
    out = get(client, f"/api/v1/clusters/{cluster}/series", step=step, **everything)
    grid = check_grid(out)
    if out["resolution"] == "hour":
        # The nodes' hours: each share split alone.
        energy = [sum(col) for col in zip(*(
            reference(shares, *grid)[0] for key, shares in scenario.shares.items()
            if key[1] != "psys"), strict=True)]
    else:
        # Each interval split once for all its shares (the same span on a node and
        # component).
        spans: dict[tuple[str, int, int], int] = defaultdict(int)
        for key, shares in scenario.shares.items():
            if key[1] != "psys":
                for start, end, uj in shares:
                    spans[(key[1], start, end)] += uj
        energy = [sum(col) for col in zip(*(reference(
            [(s, e, uj) for (c, s, e), uj in spans.items() if c == component], *grid)[0]
            for component in ("cpu", "gpu")), strict=True)]
    assert out["bucket_energy_uj"] == energy
    assert out["energy_uj"] == sum(totals[k] for k in totals if k[1] != "psys")
    assert out["pue"] == [1.0] * grid[1] and out["carbon_g_per_kwh"] == [475.0] * grid[1]
    assert out["facility_power_w"] == out["power_w"]


def test_hourly_buckets_are_the_jobs_hours(client, db_url):
    """With 1-h steps a job's buckets are its job_energy_hour rows (the same split)."""
    scenario = build(LONG_SPEC, "hours")
    post(client, scenario)
    out = get(client, "/api/v1/jobs/101/series", cluster="hours", step="3600")
    summed = [sum(col) for col in zip(*(line["bucket_energy_uj"] for line in out["lines"]),
                                      strict=True)]
    engine = client.app.state.engine
    with engine.connect() as conn:
        rows = conn.execute(select(JobEnergyHour.hour_at, JobEnergyHour.energy_uj).where(
            JobEnergyHour.cluster == "hours", JobEnergyHour.job_id == "101")).all()
    hours = {epoch_us(hour) // US_PER_S: energy for hour, energy in rows}
    assert dict(zip(out["t"], summed, strict=True)) == {t: hours.get(t, 0) for t in out["t"]}
    assert len(hours) >= 3


#: Intervals of 40 min to 1.5 h: every one crosses an hour edge.
LONG_SPEC = {"n1": (0, [(0, 2_400_000_000, [(10**9, (1, 0, 1))] * 3),
                        (5, 5_000_000_001, [(7 * 10**9 + 3, (2, 1, 1))] * 3),
                        (0, 3_599_999_999, [(0, (1, 1, 0)), (5, (0, 1, 0)), (1, (1, 0, 0))])]),
             "n2": (17, [(0, 5_500_000_000, [(3 * 10**9 + 1, (1, 0, 1))] * 3)])}


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(spec=LONG_SPEC, shift_us=0)
@example(spec=LONG_SPEC, shift_us=3600 * US_PER_S - 123_457)
@given(spec=scenario_specs(), shift_us=st.integers(0, 3600 * US_PER_S - 1))
def test_hourly_node_series_is_the_raw_one(client, spec, shift_us):
    """A node's series from node_energy_hour is, bucket by bucket, the one its raw intervals
    give at a 1-h step; the hours add up to node_energy; a cluster's hours to its nodes'."""
    scenario = build(spec, f"c{next(_clusters)}", T0 + timedelta(microseconds=shift_us))
    post(client, scenario)
    cluster = scenario.cluster
    span_lo, span_hi = scenario.span_us()
    grid = make_grid(span_lo, span_hi, 3600)
    everything = {"start": _time(span_lo).isoformat(), "end": _time(span_hi).isoformat()}
    measured_by_node = {}
    with Session(client.app.state.engine) as session:
        for node in ("n1", "n2"):
            raw, hourly = Lines(grid), Lines(grid)
            node_lines(session, cluster, node, raw)
            node_hour_lines(session, cluster, node, hourly)
            for component in {str(k[0]) for k in raw.by_key} | {str(k[0]) for k in
                                                                   hourly.by_key}:
                covered = {}
                for lines, name in ((raw, "raw"), (hourly, "hourly")):
                    parts = [lines.by_key.get((component, u)) or Line(grid.count)
                             for u in (0, 1)]
                    measured = Line(grid.count)
                    for part in parts:
                        measured.merge(part)
                    covered[name] = (measured.covered, [p.energy_uj for p in parts])
                assert covered["raw"] == covered["hourly"], (node, component)
            # Through the endpoint: hourly data, the same buckets.
            out = get(client, f"/api/v1/nodes/{node}/series", cluster=cluster, step="1h",
                      **everything)
            assert out["resolution"] == "hour" and check_grid(out) == (grid.first, grid.count,
                                                                       3600)
            got = {(line["kind"], line["component"]): line["bucket_energy_uj"]
                   for line in out["lines"]}
            for (component, unattributed), line in raw.by_key.items():
                kind = "unattributed" if unattributed else "attributed"
                assert got[(kind, component)] == line.energy_uj
            measured_by_node[node] = {c: e for (k, c), e in got.items() if k == "measured"}
            # Σ hours == the node's totals, per component, measured and unattributed.
            h = NodeEnergyHour
            hours = session.execute(
                select(h.component, func.sum(h.measured_uj), func.sum(h.unattributed_uj))
                .where(h.cluster == cluster, h.node == node).group_by(h.component)).all()
            ne = NodeEnergy
            totals = session.execute(
                select(ne.component, func.sum(ne.measured_uj), func.sum(ne.unattributed_uj))
                .where(ne.cluster == cluster, ne.node == node).group_by(ne.component)).all()
            assert sorted((c, int(m), int(u)) for c, m, u in hours) == sorted(
                (c, int(m), int(u)) for c, m, u in totals)
    out = get(client, f"/api/v1/clusters/{cluster}/series", step="1h", **everything)
    assert out["resolution"] == "hour"
    assert out["bucket_energy_uj"] == [
        sum(col) for col in zip(*(energy for lines in measured_by_node.values()
                                  for component, energy in lines.items()
                                  if component != "psys"), strict=True)]


def test_long_windows_are_hourly(client):
    """Over more than 2 days a node's or cluster's default step is whole hours (hourly
    data); a finer step keeps the raw intervals up to 8 days; beyond, hourly up to 400 days."""
    post_batch(client, one_job("long", [*range(0, 3 * 3600, 10), 20 * 86400]))
    total = sum(r["measured_uj"] for r in get(client, "/api/v1/nodes", cluster="long")["nodes"])
    assert total == 1081 * 10 * 10**8

    def series(path: str, days: float, **params: Any) -> dict[str, Any]:
        window = {"start": (T0 - timedelta(hours=1)).isoformat(),
                  "end": (T0 - timedelta(hours=1) + timedelta(days=days)).isoformat()}
        return get(client, path, **window, **params)

    for path in ("/api/v1/nodes/n1/series", "/api/v1/clusters/long/series"):
        day = series(path, 1)
        assert (day["resolution"], day["step_s"]) == ("interval", 120)
        three = series(path, 3)
        assert (three["resolution"], three["step_s"]) == ("hour", 3600)
        assert series(path, 3, step="15m")["resolution"] == "interval"
        assert series(path, 3, step="2h")["step_s"] == 7200
        month = series(path, 30)
        assert (month["resolution"], month["step_s"], month["step_raised"]) == ("hour", 3600,
                                                                                False)
        fine = series(path, 30, step="60")
        assert (fine["resolution"], fine["step_s"], fine["step_raised"]) == ("hour", 3600,
                                                                             True)
        year = series(path, 400)
        assert year["resolution"] == "hour" and len(year["t"]) <= MAX_POINTS
        assert year["step_s"] % 3600 == 0 and not year["step_raised"]
        for out in (three, month, fine, year):
            lines = [line for line in out["lines"] if line.get("kind", "measured") == "measured"]
            assert sum(line["energy_uj"] for line in lines) == (
                total if out is not three else 1080 * 10 * 10**8)
        assert sum(e for line in month["lines"] for e in line["bucket_energy_uj"]
                   if line.get("kind", "measured") == "measured") == total
        # A bucket longer than 8 days is read hourly, whole (at most a year of hours).
        wide = get(client, path, step="366d", start="now-1hour")
        assert (wide["resolution"], wide["step_s"]) == ("hour", 366 * 86400)
        assert len(wide["t"]) in (1, 2)
        odd = get(client, path, step=str(9 * 86400 + 1), start="now-1hour")
        assert odd["resolution"] == "hour" and odd["step_s"] % 3600 == 0 and odd["step_raised"]
    assert month["nodes"] == 1 and len(month["pue"]) == len(month["t"])


def test_before_retention_nodes_and_clusters_are_hourly(client):
    post_batch(client, one_job("old", [0, 10, 4000, 7300], length_s=10))
    window = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=2, minutes=50)).isoformat()}
    before = get(client, "/api/v1/clusters/old/series", step="60", **window)
    assert before["resolution"] == "interval" and before["energy_uj"] == 4 * 10**9
    with client.app.state.engine.begin() as conn:
        conn.execute(insert(IntervalRetention).values(name="energy_interval",
                                                      kept_from=T0 + timedelta(days=1)))
    for path in ("/api/v1/clusters/old/series", "/api/v1/nodes/n1/series"):
        out = get(client, path, step="60", **window)
        assert (out["resolution"], out["step_s"], out["step_raised"]) == ("hour", 3600, True)
        assert out["retained_from"] == (T0 + timedelta(days=1)).isoformat().replace(
            "+00:00", "Z")
        [measured] = [line for line in out["lines"] if line.get("kind", "measured") ==
                      "measured"]
        assert measured["bucket_energy_uj"] == [2 * 10**9, 10**9, 10**9]


# ---------------------------------------------------------------------------------------------
# Bounds, retention, phases, factors


def one_job(cluster: str, starts_s: list[int], length_s: int = 10, job_id: str = "7",
            phase: str | None = None) -> Batch:
    intervals = []
    for start_s in starts_s:
        start = T0 + timedelta(seconds=start_s)
        intervals.append(Interval(
            start=start, end=start + timedelta(seconds=length_s),
            sources=[SourceEnergy(component="gpu", source="gpu/a", measured_uj=length_s * 10**8,
                                  jobs_uj={job_id: length_s * 10**8 - 5}, unattributed_uj=5)],
            jobs=[JobSample(job_id=job_id, uid=1000, phase=phase, model="m" if phase else None)]))
    return Batch(schema_version=1, cluster=cluster, node="n1", boot_id="b", seq=0,
                 intervals=intervals)


def test_a_long_job_has_at_most_max_points(client):
    post_batch(client, one_job("long", [0, 40 * 86400]))
    out = get(client, "/api/v1/jobs/7/series")
    # Over more than 8 days: the job's hourly energy, one line.
    assert out["resolution"] == "hour" and len(out["lines"]) == 1
    assert len(out["t"]) <= MAX_POINTS and out["step_s"] == 3600 and not out["step_raised"]
    assert sum(out["lines"][0]["bucket_energy_uj"]) == 2 * (10 * 10**8 - 5)
    assert sum(p is not None for p in out["lines"][0]["power_w"]) == 2
    fine = get(client, "/api/v1/jobs/7/series", step="1")
    assert fine["step_s"] == 3600 and fine["step_raised"] and fine["requested_step_s"] == 1
    assert get(client, "/api/v1/jobs/7/series", step="1d")["step_s"] == 86400
    # Zoomed in: per source from the intervals again.
    zoom = get(client, "/api/v1/jobs/7/series", start=(T0 + timedelta(days=39)).isoformat())
    assert zoom["resolution"] == "interval" and zoom["lines"][0]["source"] == "gpu/a"
    assert zoom["energy_uj"] == 10 * 10**8 - 5 and len(zoom["t"]) <= MAX_POINTS


def test_after_retention_the_job_is_hourly(client, db_url):
    post_batch(client, one_job("ret", [0, 10, 4000, 7300], length_s=10))
    before = get(client, "/api/v1/jobs/7/series", step="60")
    assert before["resolution"] == "interval" and before["retained_from"] is None
    with client.app.state.engine.begin() as conn:
        conn.execute(insert(IntervalRetention).values(name="energy_interval",
                                                      kept_from=T0 + timedelta(days=1)))
    out = get(client, "/api/v1/jobs/7/series", step="60")
    assert out["resolution"] == "hour" and out["step_s"] == 3600 and out["step_raised"]
    assert out["retained_from"] == (T0 + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    [line] = out["lines"]
    assert (line["node"], line["component"], line["source"]) == (None, "total", "total")
    assert line["energy_uj"] == out["energy_uj"] == get(client, "/api/v1/jobs/7")["energy_uj"]
    assert line["bucket_energy_uj"] == [2 * (10**9 - 5), 10**9 - 5, 10**9 - 5]
    assert out["t"][0] % 3600 == 0


def test_phases_shade_the_series(client):
    post_batch(client, one_job("ph", [0, 10, 20], phase="training"))
    out = get(client, "/api/v1/jobs/7/series")
    assert out["phases"] == [{"phase": "training", "model": "m",
                              "start": "2026-11-23T10:00:00.123457Z",
                              "end": "2026-11-23T10:00:30.123457Z"}]
    assert out["step_s"] == 1 and len(out["t"]) == 31


def test_cluster_factors_per_bucket(client):
    post_batch(client, one_job("f", list(range(0, 7200, 10))))
    points = [{"time": "2026-11-23T10:00:00Z", "value": 1.2},
              {"time": "2026-11-23T11:00:00Z", "value": 1.5}]
    assert client.post("/api/v1/clusters/f/pue/series",
                       json={"points": points}).status_code == 200
    assert client.put("/api/v1/clusters/f/carbon",
                      json={"source": "constant", "g_per_kwh": 300}).status_code == 200
    out = get(client, "/api/v1/clusters/f/series", start="2026-11-23T10:00:00Z",
              end="2026-11-23T12:00:00Z", step="30m")
    assert out["t"][0] == epoch_us(datetime(2026, 11, 23, 10, tzinfo=UTC)) // US_PER_S
    assert out["pue"] == [1.2, 1.2, 1.5, 1.5] and out["carbon_g_per_kwh"] == [300.0] * 4
    assert out["facility_power_w"] == [p * f for p, f in zip(out["power_w"], out["pue"],
                                                               strict=True)]
    # The GPU's measured energy but the 0.123457 s of the last interval past 12:00.
    assert out["energy_uj"] == 720 * 10**9 - 10**9 * 123_457 // 10_000_000
    # Buckets of 2 h: the time-weighted mean of the hours.
    wide = get(client, "/api/v1/clusters/f/series", start="2026-11-23T10:00:00Z",
               end="2026-11-23T12:00:00Z", step="2h")
    assert wide["pue"] == [pytest.approx(1.35)]


def post_batch(client: Any, batch: Batch) -> None:
    response = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------
# Bad input, unknown names


@pytest.mark.parametrize(("path", "params", "status", "words"), [
    ("/api/v1/jobs/7/series", {"step": "0"}, 422, "step"),
    ("/api/v1/jobs/7/series", {"step": "-5"}, 422, "step"),
    ("/api/v1/jobs/7/series", {"step": "1.5"}, 422, "step"),
    ("/api/v1/jobs/7/series", {"step": "abc"}, 422, "step"),
    ("/api/v1/jobs/7/series", {"step": "99999999999"}, 422, "step"),
    ("/api/v1/jobs/7/series", {"step": "9" * 40}, 422, "step"),
    ("/api/v1/jobs/7/series", {"start": "yesterday"}, 422, "start"),
    ("/api/v1/jobs/7/series", {"end": "1e30"}, 422, "end"),
    ("/api/v1/jobs/7/series", {"start": "2026-11-23T11:00:00Z",
                               "end": "2026-11-23T10:00:00Z"}, 422, "not after"),
    # Over 400 days (hourly data: at most nodes × that many hours of rows).
    ("/api/v1/nodes/n1/series", {"start": "2025-01-01T00:00:00Z",
                                 "end": "2026-02-05T00:00:01Z"}, 422, "longer than"),
    ("/api/v1/clusters/bad/series", {"start": "2025-01-01T00:00:00Z",
                                     "end": "2026-03-01T00:00:00Z"}, 422, "longer than"),
    ("/api/v1/clusters/bad/series", {"step": "1w2"}, 422, "step"),
    ("/api/v1/nodes/n1/series", {"step": "367d"}, 422, "step"),
    ("/api/v1/jobs/8/series", {}, 404, "not found"),
    ("/api/v1/jobs/7/series", {"cluster": "other"}, 404, "not found"),
    ("/api/v1/nodes/n9/series", {}, 404, "n9"),
    ("/api/v1/clusters/nowhere/series", {}, 404, "nowhere"),
])
def test_bad_requests(client, path, params, status, words):
    post_batch(client, one_job("bad", [0]))
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"] if isinstance(response.json()["detail"], str) \
        else words in str(response.json()["detail"])


def test_ambiguous_names_are_409(client):
    post_batch(client, one_job("a", [0]))
    post_batch(client, one_job("b", [0]))
    assert client.get("/api/v1/jobs/7/series").status_code == 409
    assert client.get("/api/v1/nodes/n1/series").status_code == 409
    assert get(client, "/api/v1/jobs/7/series", cluster="b")["cluster"] == "b"
    assert get(client, "/api/v1/nodes/n1/series", cluster="b",
               start=T0.isoformat())["cluster"] == "b"


# ---------------------------------------------------------------------------------------------
# Access: Slurm JWTs of users over the same database


@pytest.fixture
def jwt_api(db_url, make_client, tmp_path: Path) -> Any:
    """Post two users' jobs with an unauthenticated server, then read through a JWT one."""
    import jwt as pyjwt

    from jobenergy.collector.settings import ServerSettings
    from jobenergy.core.request_auth import SlurmJwtAuth

    writer = make_client(ServerSettings(db_url=db_url, auth="none", migrate=False, pue=1.0,
                                        carbon_intensity_g_per_kwh=None))
    for job_id, user in (("700", "nobody"), ("701", "daemon")):
        response = writer.post("/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": T0.isoformat(),
            "user": user, "account": f"{user}-acct"})
        assert response.status_code == 200, response.text
    post_batch(writer, Batch(schema_version=1, cluster="c1", node="n1", boot_id="b", seq=0,
                             intervals=one_batch_intervals()))
    key = tmp_path / "jwt.key"
    key.write_bytes(b"k" * 64)
    key.chmod(0o600)

    def auth(user: str, private_data: str | None = None) -> tuple[Any, Any]:
        overrides = {} if private_data is None else {"private_data": private_data}
        reader = make_client(ServerSettings(db_url=db_url, auth="jwt", jwt_key=key,
                                            migrate=False, sacctmgr="", **overrides))
        now = int(time.time())
        token = pyjwt.encode({"sun": user, "iat": now, "exp": now + 600}, b"k" * 64,
                             algorithm="HS256")
        return reader, SlurmJwtAuth(user, token)

    return auth


def one_batch_intervals() -> list[Interval]:
    """One interval of n1 where jobs 700 and 701 share the CPU and the GPU."""
    srcs = []
    for component, source in SOURCES[:2]:
        parts = split_uj(10**9, {"700": 1, "701": 2, None: 1})
        rest = parts.pop(None)
        srcs.append(SourceEnergy(component=component, source=source, measured_uj=10**9,
                                 jobs_uj=parts, unattributed_uj=rest))
    return [Interval(start=T0, end=T0 + timedelta(seconds=10), sources=srcs,
                     jobs=[JobSample(job_id="700"), JobSample(job_id="701")])]


def test_access_follows_the_job_lookup(jwt_api):
    reader, nobody = jwt_api("nobody")
    window = {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=1)).isoformat()}
    own = reader.get("/api/v1/jobs/700/series", auth=nobody)
    assert own.status_code == 200, own.text
    assert own.json()["energy_uj"] == reader.get("/api/v1/jobs/700", auth=nobody).json()[
        "energy_uj"] > 0
    for path, status in (("/api/v1/jobs/701/series", 403), ("/api/v1/jobs/702/series", 404),
                         ("/api/v1/nodes/n1/series", 403), ("/api/v1/clusters/c1/series", 403)):
        response = reader.get(path, params=window, auth=nobody)
        assert response.status_code == status, (path, response.text)
    # Root (the Slurm user's peer: reads all) sees everything.
    reader, root = jwt_api("root")
    for path in ("/api/v1/jobs/701/series", "/api/v1/nodes/n1/series",
                 "/api/v1/clusters/c1/series"):
        assert reader.get(path, params=window if "jobs" not in path else {},
                          auth=root).status_code == 200
    # Without PrivateData usage, a user reads the cluster's total but still not a node's.
    reader, nobody = jwt_api("nobody", private_data="jobs")
    assert reader.get("/api/v1/clusters/c1/series", params=window, auth=nobody).status_code == 200
    assert reader.get("/api/v1/nodes/n1/series", params=window, auth=nobody).status_code == 403
    assert reader.get("/api/v1/jobs/701/series", auth=nobody).status_code == 403


def test_a_job_without_energy_has_empty_lines(client):
    for event, at in (("start", T0), ("end", T0 + timedelta(minutes=10))):
        response = client.post("/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": "9", "event": event, "time": at.isoformat()})
        assert response.status_code == 200, response.text
    out = get(client, "/api/v1/jobs/9/series")
    assert out["lines"] == [] and out["energy_uj"] == 0 and out["step_s"] == 1
    assert len(out["t"]) == 601 and out["start"] == "2026-11-23T10:00:00Z"
