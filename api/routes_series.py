"""Power over time: ``GET /api/v1/jobs/{job_id}/series``, ``/nodes/{node}/series`` and
``/clusters/{cluster}/series``.

Each answers a grid of at most :data:`~jobenergy.api.power_series.MAX_POINTS` buckets
(``step`` like Prometheus' query_range, in seconds or ``5m``/``1h``/``1d``; by default the
smallest of 1 s, 5 s, 10 s, 15 s, 30 s, 1 min, 2 min, 5 min, ... that fits; a finer step is
raised to it and the answer says so) with exact integer µJ per bucket
(``api/power_series.py``, ``api/series_queries.py``).

A job's series is read from the raw intervals, and, for the part of its life before the raw
intervals' retention, from its minutes (``job_energy_minute``, rolled up just before
retention drops a month; ``resolution: "minute"``, steps of whole minutes), seamlessly: the
lines (per node, component and source) are the same and add up to the job's energy exactly.

A node's or a cluster's series is read from the raw intervals for steps under an hour, and
from the per-node hourly energy (``node_energy_hour``, ``resolution: "hour"``) for steps of
whole hours, by default over windows longer than :data:`HOURLY_AFTER`, over windows longer
than :data:`MAX_WINDOW` and before the raw intervals' retention: up to
:data:`MAX_HOURLY_WINDOW`, whatever the retention.

Who may read: a job's series as the job (``GET /api/v1/jobs/{job_id}``: 403 for another
user's job under ``private_data = jobs``); a node's, as ``GET /api/v1/nodes`` (admins,
operators, the hooks); a cluster's, whoever may read everyone's usage (``private_data``
without ``usage``, or admins, operators, the hooks): it is the sum over every user's jobs.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from jobenergy.api.authenticate import forbidden
from jobenergy.api.power_series import (
    MAX_POINTS,
    BadStep,
    Grid,
    Line,
    Lines,
    epoch_us,
    iso_z,
    make_grid,
    parse_step,
)
from jobenergy.api.routes_jobs import parse_time
from jobenergy.api.series_queries import (
    JobSpan,
    cluster_hour_lines,
    cluster_lines,
    cluster_nodes,
    find_jobs,
    job_hour_lines,
    job_interval_lines,
    job_line_keys,
    job_minute_lines,
    job_phases,
    minute_marks,
    node_clusters,
    node_components,
    node_hour_lines,
    node_lines,
    retained_from,
)
from jobenergy.api.series_schemas import (
    ClusterSeries,
    ClusterSeriesLine,
    JobSeries,
    JobSeriesLine,
    NodeSeries,
    NodeSeriesLine,
    SeriesPhase,
)
from jobenergy.collector.factors import ClusterFactors, load_factors
from jobenergy.collector.routes import AccessDep, SessionDep, SessionsClosed
from jobenergy.core.carbon import HOUR, hour_floor
from jobenergy.core.schema import ATTRIBUTED_COMPONENTS, MAX_INTERVAL_S

router = APIRouter(prefix="/api/v1", tags=["series"], route_class=SessionsClosed)

#: Window of a node or cluster series without start and end: the last day.
DEFAULT_WINDOW = timedelta(days=1)
#: Longest window read from raw intervals (a week and a day: a request reads at most that many
#: node-days of rows). Longer: hourly energy (a node, a cluster, a job).
MAX_WINDOW = timedelta(days=8)
#: A node or cluster window longer than this is read hourly unless the step asks otherwise
#: (the default step is then 5 min or more: whole hours show the same shape for a fraction of
#: the rows read).
HOURLY_AFTER = timedelta(days=2)
#: Longest node or cluster window (hourly data: at most nodes × this many hours of rows).
MAX_HOURLY_WINDOW = timedelta(days=400)
HOUR_S = 3600
MINUTE_S = 60

StepQuery = Annotated[str | None, Query(
    max_length=32, description="bucket width: seconds, or 30s, 5m, 1h, 1d (default: the "
    f"smallest nice width giving at most {MAX_POINTS} buckets)")]
TimeQuery = Annotated[str | None, Query(max_length=64, description="ISO 8601 or epoch s")]
ClusterQuery = Annotated[str | None, Query(max_length=255)]


def _step(value: str | None) -> int | None:
    try:
        return parse_step(value)
    except BadStep as err:
        raise HTTPException(status_code=422, detail=f"step: {err}") from err


def _window(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    ws, we = parse_time(start, "start"), parse_time(end, "end")
    if ws is not None and we is not None and we <= ws:
        raise HTTPException(status_code=422, detail=f"end {we.isoformat()} is not after start "
                                                    f"{ws.isoformat()}")
    return ws, we


def _recent_window(start: str | None, end: str | None, step_s: int | None,
                   kept: datetime | None) -> tuple[datetime, datetime, bool]:
    """A node or cluster window (default: the last day; at most :data:`MAX_HOURLY_WINDOW`)
    and whether to read it hourly.

    Hourly: a step of whole hours, or none over more than :data:`HOURLY_AFTER`; a window
    longer than :data:`MAX_WINDOW`, a step longer than it (a bucket is read whole, however
    little of it the window covers: a step is at most ``MAX_STEP_S``, under
    :data:`MAX_HOURLY_WINDOW`) or a window reaching back before the retained raw intervals,
    whatever the step (raised to whole hours).
    """
    ws, we = _window(start, end)
    if we is None:
        we = ws + DEFAULT_WINDOW if ws is not None else datetime.now(UTC)
    if ws is None:
        ws = we - DEFAULT_WINDOW
    span = we - ws
    if span > MAX_HOURLY_WINDOW:
        raise HTTPException(status_code=422, detail=f"window of {span} is longer than "
                                                    f"{MAX_HOURLY_WINDOW.days} days")
    hourly = (span > MAX_WINDOW or (kept is not None and ws < kept)
              or (step_s is None and span > HOURLY_AFTER)
              or (step_s is not None and (step_s % HOUR_S == 0
                                          or step_s > MAX_WINDOW.total_seconds())))
    return ws, we, hourly


def _grid_fields(grid: Grid, kept: datetime | None) -> dict[str, Any]:
    return {
        "start": iso_z(grid.start_s) if grid.count else None,
        "end": iso_z(grid.end_s) if grid.count else None, "step_s": grid.step_s,
        "requested_step_s": grid.requested_step_s, "step_raised": grid.step_raised,
        "max_points": MAX_POINTS, "t": grid.times(),
        "retained_from": kept.isoformat().replace("+00:00", "Z") if kept else None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


# ---------------------------------------------------------------------------------------------
# Jobs


def _visible_job(session: SessionDep, access: AccessDep, job_id: str,
                 cluster: str | None) -> JobSpan:
    """The job, with the answers of ``GET /api/v1/jobs/{job_id}`` (404, 403, 409)."""
    found = find_jobs(session, job_id, cluster)
    jobs = [j for j in found if access.sees_job(j.user, j.uid, j.account)]
    if found and not jobs:
        raise HTTPException(
            status_code=403,
            detail=f"job {job_id} is not visible to {access.caller.describe()}: it belongs "
                   "to another user (private_data includes jobs)")
    if not jobs:
        where = f" on cluster {cluster}" if cluster is not None else ""
        raise HTTPException(status_code=404, detail=f"job {job_id} not found{where}")
    if len(jobs) > 1:
        clusters = ", ".join(j.cluster for j in jobs)
        raise HTTPException(status_code=409,
                            detail=f"job {job_id} exists on clusters {clusters}: pass ?cluster=")
    return jobs[0]


@router.get("/jobs/{job_id}/series", response_model=JobSeries,
            summary="A job's power over time per node and source")
def get_job_series(job_id: str, session: SessionDep, access: AccessDep,
                   cluster: ClusterQuery = None, step: StepQuery = None,
                   start: TimeQuery = None, end: TimeQuery = None) -> JobSeries:
    """Return the job's energy and mean power per bucket, per (node, component, source).

    Default window: the job's life (its Slurm start and end, widened to its stored energy).
    The lines add up exactly to the job's ``energy_uj`` of ``GET /api/v1/jobs/{job_id}``
    when the window holds all of it. Before ``retained_from`` (raw intervals past retention,
    by default 30 days after their month) the same lines come from the job's per-minute
    energy, so the step there is at least a minute (``resolution: "minute"``; a finer step is
    raised); after it, from the raw intervals, in the same buckets. Over a window longer than
    :data:`MAX_WINDOW` (zoom in for detail), or for a job whose intervals were dropped before
    per-minute energy was kept (revision 0017), one line (component ``total``) from the
    job's hourly energy, with steps of whole hours.
    """
    step_s = _step(step)
    ws, we = _window(start, end)
    job = _visible_job(session, access, job_id, cluster)
    firsts = [t for t in (job.start_at, job.first_at) if t is not None]
    lasts = [t for t in (job.end_at, job.last_at) if t is not None]
    ws = ws or (min(firsts) if firsts else None)
    we = we or (max(lasts) if lasts else None)
    if ws is not None and we is None:
        we = max(ws, datetime.now(UTC))
    kept = retained_from(session)
    minutes_from, through = minute_marks(session)
    hourly = minutely = False
    if ws is not None and we is not None and job.first_at is not None:
        # Minutes exist from minutes_from on; raw intervals from kept on. A job with energy in
        # neither (dropped before minutes were kept) is read from its hours.
        lost_before = minutes_from if minutes_from is not None else (
            kept if through is None else None)
        hourly = we - ws > MAX_WINDOW or (
            lost_before is not None and job.first_at < lost_before and ws < lost_before)
        # The last interval rolled up may reach past `through` (its tail is a minute row).
        minutely = not hourly and through is not None and job.first_at < through and (
            ws < through + timedelta(seconds=MAX_INTERVAL_S))
    if ws is None or we is None or we <= ws:
        grid = Grid(step_s=step_s or 1, first=0, count=0, requested_step_s=step_s)
    else:
        grid = make_grid(epoch_us(ws), epoch_us(we), step_s,
                         HOUR_S if hourly else MINUTE_S if minutely else 1)
    lines = Lines(grid)
    if job.first_at is not None and grid.count:
        if hourly:
            job_hour_lines(session, job, lines, (None, "total", "total"))
        else:
            for key in job_line_keys(session, job):  # every line, even one empty here
                lines.line(key)
            if minutely:
                job_minute_lines(session, job, lines)
            # The intervals rolled up (start before `through`) are in the minutes, whether or
            # not their partition is dropped yet.
            job_interval_lines(session, job, lines, raw_from=through)
    out = [JobSeriesLine(node=key[0], component=key[1], source=key[2],  # type: ignore[arg-type]
                         **_line(line, grid)) for key, line in sorted(
               lines.by_key.items(), key=lambda item: tuple(str(k) for k in item[0]))]
    return JobSeries(
        cluster=job.cluster, job_id=job.job_id,
        resolution="hour" if hourly else "minute" if minutely else "interval",
        energy_uj=sum(line.energy_uj for line in out), lines=out,
        phases=[SeriesPhase(phase=p["phase"], model=p["model"], start=_iso(p["start"]),
                            end=_iso(p["end"])) for p in job_phases(session, job)],
        **_grid_fields(grid, kept))


def _line(line: Line, grid: Grid) -> dict[str, Any]:
    return {"energy_uj": line.total_uj, "bucket_energy_uj": line.energy_uj,
            "power_w": line.power_w(grid.step_s)}


# ---------------------------------------------------------------------------------------------
# Nodes


@router.get("/nodes/{node}/series", response_model=NodeSeries,
            summary="A node's measured, attributed and unattributed power over time")
def get_node_series(node: str, session: SessionDep, access: AccessDep,
                    cluster: ClusterQuery = None, step: StepQuery = None,
                    start: TimeQuery = None, end: TimeQuery = None) -> NodeSeries:
    """Return per component the node's measured energy per bucket, split into what went to
    jobs (attributed) and what stayed the node's (unattributed); measured = attributed +
    unattributed in every bucket, exactly. Default window: the last day; at most 400 days,
    read from hourly energy for steps of whole hours (over more than 2 days by default, over
    more than 8 days or before the raw intervals' retention always).

    For admins, operators and the Slurm hooks, as ``GET /api/v1/nodes``.
    """
    if not access.reads_all:
        raise forbidden(access, "read per-node series (admins and operators do)")
    step_s = _step(step)
    kept = retained_from(session)
    ws, we, hourly = _recent_window(start, end, step_s, kept)
    clusters = node_clusters(session, node, cluster)
    if not clusters:
        where = f" on cluster {cluster}" if cluster is not None else ""
        raise HTTPException(status_code=404, detail=f"node {node} has sent nothing{where}")
    if len(clusters) > 1:
        raise HTTPException(status_code=409, detail=f"node {node} exists on clusters "
                                                    f"{', '.join(clusters)}: pass ?cluster=")
    grid = make_grid(epoch_us(ws), epoch_us(we), step_s, HOUR_S if hourly else 1)
    lines = Lines(grid)
    if hourly:
        node_hour_lines(session, clusters[0], node, lines)
    else:
        node_lines(session, clusters[0], node, lines)
    out = []
    components = {str(key[0]) for key in lines.by_key}
    for component in sorted(components.union(node_components(session, clusters[0], [node]))):
        attributed = lines.by_key.get((component, 0)) or Line(grid.count)
        unattributed = lines.by_key.get((component, 1)) or Line(grid.count)
        measured = Line(grid.count)
        measured.merge(attributed)
        measured.merge(unattributed)
        # Where the node measured, its parts are 0 W rather than gaps (hourly rows hold
        # both parts of every hour measured, whether or not any share was stored).
        attributed.covered = unattributed.covered = measured.covered
        for kind, line in (("measured", measured), ("attributed", attributed),
                           ("unattributed", unattributed)):
            out.append(NodeSeriesLine(kind=kind, component=component,  # type: ignore[arg-type]
                                      **_line(line, grid)))
    return NodeSeries(cluster=clusters[0], node=node, lines=out,
                      resolution="hour" if hourly else "interval", **_grid_fields(grid, kept))


# ---------------------------------------------------------------------------------------------
# Clusters


def bucket_factors(factors: ClusterFactors, grid: Grid) -> tuple[list[float], list[float]]:
    """Return each bucket's PUE and carbon intensity: the hourly values that ingest applies
    (``collector/factors.py``), time-weighted over the bucket."""
    pue_starts = [p[0] for p in factors.pue_steps]
    pue_ends = [p[1] for p in factors.pue_steps]
    carbon_starts = [p[0] for p in factors.carbon_steps]
    carbon_ends = [p[1] for p in factors.carbon_steps]
    cache: dict[datetime, tuple[float, float]] = {}

    def at_hour(hour: datetime) -> tuple[float, float]:
        if hour not in cache:
            # Only the series steps overlapping the hour (steps are sorted, disjoint).
            narrowed = replace(
                factors,
                pue_steps=factors.pue_steps[bisect_right(pue_ends, hour):
                                            bisect_left(pue_starts, hour + HOUR)],
                carbon_steps=factors.carbon_steps[bisect_right(carbon_ends, hour):
                                                  bisect_left(carbon_starts, hour + HOUR)])
            f = narrowed.at_hour(hour)
            cache[hour] = (f.pue, f.carbon_g_per_kwh)
        return cache[hour]

    pues, carbons = [], []
    for t in grid.times():
        lo, hi = datetime.fromtimestamp(t, UTC), datetime.fromtimestamp(t + grid.step_s, UTC)
        hour, pue_s, carbon_s = hour_floor(lo), 0.0, 0.0
        while hour < hi:
            seconds = (min(hi, hour + HOUR) - max(lo, hour)).total_seconds()
            pue, carbon = at_hour(hour)
            pue_s += pue * seconds
            carbon_s += carbon * seconds
            hour += HOUR
        pues.append(pue_s / grid.step_s)
        carbons.append(carbon_s / grid.step_s)
    return pues, carbons


@router.get("/clusters/{cluster}/series", response_model=ClusterSeries,
            summary="A cluster's power, facility power, PUE and carbon intensity over time")
def get_cluster_series(cluster: str, session: SessionDep, access: AccessDep,
                       step: StepQuery = None, start: TimeQuery = None,
                       end: TimeQuery = None) -> ClusterSeries:
    """Return the measured CPU, DRAM and GPU energy of every node of the cluster per bucket,
    with the PUE and carbon intensity in force. Default window: the last day; at most 400
    days, read from hourly energy as a node's series is.

    Whoever may read everyone's usage (``private_data`` without ``usage``; admins,
    operators, the hooks).
    """
    if access.scope("usage") is not None:
        raise forbidden(access, "read a cluster's series (everyone's usage: private_data "
                                "includes usage)")
    step_s = _step(step)
    kept = retained_from(session)
    ws, we, hourly = _recent_window(start, end, step_s, kept)
    nodes = cluster_nodes(session, cluster)
    if not nodes:
        raise HTTPException(status_code=404, detail=f"no node of cluster {cluster} has sent "
                                                    "anything")
    grid = make_grid(epoch_us(ws), epoch_us(we), step_s, HOUR_S if hourly else 1)
    lines = Lines(grid)
    if hourly:
        cluster_hour_lines(session, cluster, lines)
    else:
        cluster_lines(session, cluster, nodes, lines)
    for component in node_components(session, cluster):
        if component in ATTRIBUTED_COMPONENTS:
            lines.line((component,))
    total = Line(grid.count)
    for line in lines.by_key.values():
        total.merge(line)
    factors = load_factors(session.connection(), cluster,
                           datetime.fromtimestamp(grid.start_s, UTC),
                           datetime.fromtimestamp(grid.end_s, UTC))
    pues, carbons = bucket_factors(factors, grid)
    power = total.power_w(grid.step_s)
    return ClusterSeries(
        cluster=cluster, nodes=len(nodes), energy_uj=total.total_uj,
        bucket_energy_uj=total.energy_uj, power_w=power,
        facility_power_w=[None if p is None else p * f for p, f in zip(power, pues,
                                                                         strict=True)],
        pue=pues, carbon_g_per_kwh=carbons,
        lines=[ClusterSeriesLine(component=str(key[0]), **_line(line, grid))
               for key, line in sorted(lines.by_key.items(), key=lambda i: str(i[0][0]))],
        resolution="hour" if hourly else "interval", **_grid_fields(grid, kept))

