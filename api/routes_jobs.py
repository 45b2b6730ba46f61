"""``GET /api/v1/jobs/{job_id}`` and ``GET /api/v1/jobs``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from jobenergy.api.access import Access
from jobenergy.api.authenticate import get_access
from jobenergy.api.factors_view import ClusterLabels, FactorGroup, emissions
from jobenergy.api.queries import (
    MAX_CURSOR_LEN,
    BadCursor,
    Cursor,
    JobDetail,
    JobFilters,
    NodeMark,
    SourceTotal,
    StepTotals,
    count_jobs,
    job_nodes,
    lookup_details,
    page_details,
)
from jobenergy.api.schemas import DeviceEnergy, JobList, JobOut, JobQuality, PhaseOut, StepOut
from jobenergy.collector.steps import OUTSIDE_STEP, step_sort_key
from jobenergy.core import carbon
from jobenergy.core.schema import ATTRIBUTED_COMPONENTS, check_time

router = APIRouter(prefix="/api/v1", tags=["jobs"])

MAX_LIMIT = 10_000
#: Largest ``offset`` (a signed 64-bit integer in SQL).
MAX_OFFSET = 2**63 - 1
#: Most job ids one ``GET /api/v1/jobs?job_id=`` may name.
MAX_JOB_IDS = 10_000


def parse_time(value: str | None, name: str) -> datetime | None:
    """Parse an ISO 8601 time or epoch seconds (naive means UTC), between 1970 and 2100.

    Raises:
        HTTPException: 422 naming the parameter when the value is neither, or out of range.
    """
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as err:
            raise HTTPException(
                status_code=422, detail=f"{name}: {value!r} is neither ISO 8601 nor epoch seconds"
            ) from err
    else:
        try:
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        except (ValueError, OverflowError, OSError) as err:
            raise HTTPException(
                status_code=422,
                detail=f"{name}: {value!r} epoch seconds are not between 1970 and 2100",
            ) from err
    try:
        return check_time(parsed)
    except ValueError as err:
        raise HTTPException(status_code=422, detail=f"{name}: {err}") from err


class DetailLabels(ClusterLabels):
    """Carbon source labels from the factors read with the jobs (:class:`JobDetail`
    ``configs``); a cluster's are read from the database only when they were not."""

    def __init__(self, session: Any, details: list[JobDetail]) -> None:
        """Remember the configs that came with ``details``."""
        super().__init__(session)
        self._known = {d.job.cluster: d.configs for d in details if d.configs is not None}

    def configs(self, cluster: str) -> tuple[Any, Any]:
        """Return the cluster's config row and the defaults row."""
        known = self._known.get(cluster)
        return known if known is not None else super().configs(cluster)


def job_view(
    job: Any,
    totals: list[SourceTotal],
    groups: list[FactorGroup],
    phases: list[dict[str, Any]],
    labels: ClusterLabels,
    steps: StepTotals | None = None,
    seen: set[str] | None = None,
    marks: dict[tuple[str, str], NodeMark] | None = None,
) -> JobOut:
    """Assemble a job's JSON from its metadata (a ``Job`` or a row of its columns), per-source
    totals, factor groups, phases, per-step energy, the nodes whose agents saw it and those
    nodes' high-water marks.

    ``final``: the job has ended and every node of it (:func:`job_nodes`; at least one) has
    intervals ingested up to or past its end. ``quality.unmeasured``: the job has no
    per-source total at all, and a node of it was seen by its agent or has no sources.
    """
    seen = seen or set()
    marks = marks or {}
    totals = [t for t in totals if t.component in ATTRIBUTED_COMPONENTS]
    by_component = {"cpu": 0, "dram": 0}
    by_node: dict[str, dict[str, int]] = {}
    best_by_node: dict[str, float] = {}
    devices = []
    for t in sorted(totals, key=lambda t: (t.node, t.component, t.source)):
        by_component[t.component] = by_component.get(t.component, 0) + t.energy_uj
        node = by_node.setdefault(t.node, {})
        node[t.component] = node.get(t.component, 0) + t.energy_uj
        best_by_node[t.node] = max(best_by_node.get(t.node, 0.0), t.covered_s)
        if t.component == "gpu":
            devices.append(
                DeviceEnergy(
                    node=t.node, source=t.source, device_name=t.device_name,
                    component=t.component, energy_uj=t.energy_uj,
                )
            )
    energy_uj = sum(by_component.values())
    nodes = job_nodes(job, totals, seen)
    mark = {node: marks.get((job.cluster, node)) for node in nodes}
    final = job.end_at is not None and bool(nodes) and all(
        m is not None and m.last_at >= job.end_at for m in mark.values()
    )
    unmeasured_nodes = sorted(
        node for node in nodes
        if node not in by_node
        and (node in seen or (mark[node] is not None and mark[node].last_sources == 0))
    )
    elapsed_s = None
    if job.start_at is not None and job.end_at is not None:
        elapsed_s = (job.end_at - job.start_at).total_seconds()
    elif job.start_at is not None and (job.state or "").upper() == "RUNNING":
        elapsed_s = max(0.0, (datetime.now(UTC) - job.start_at).total_seconds())  # so far
    # A job is only as well covered as its worst node.
    covered_s = min(best_by_node.values(), default=0.0)
    coverage = covered_s / elapsed_s if elapsed_s else None
    kwh = carbon.energy_kwh(energy_uj)
    em = emissions(job.cluster, groups, labels)
    estimated_components = sorted({t.component for t in totals if t.estimated_uj > 0})
    return JobOut(
        job_id=job.job_id,
        cluster=job.cluster,
        user=job.user,
        uid=job.uid,
        account=job.account,
        partition=job.partition,
        name=job.name,
        state=job.state,
        exit_code=job.exit_code,
        nodes=list(job.nodes) if job.nodes else sorted(set(by_node) | seen),
        gpus=job.gpus,
        start=job.start_at,
        end=job.end_at,
        elapsed_s=elapsed_s,
        final=final,
        energy_uj=energy_uj,
        by_component=by_component,
        by_node=by_node,
        devices=devices,
        energy_kwh=kwh,
        pue=em.pue,
        pue_source=em.pue_source,
        facility_uj=em.facility_uj,
        facility_energy_kwh=em.facility_energy_kwh,
        carbon_intensity_g_per_kwh=em.carbon_intensity_g_per_kwh,
        carbon_intensity_fallback=em.carbon_intensity_fallback,
        carbon_intensity_source=em.carbon_intensity_source,
        carbon_intensity_sources=em.carbon_intensity_sources,
        co2e_ug=em.co2e_ug,
        co2e_kg=em.co2e_kg,
        model=job.model,
        phase=job.phase,
        tags=dict(job.tags or {}),
        phases=[PhaseOut(**p) for p in phases],
        steps=step_view(steps or {}, by_component),
        quality=JobQuality(
            sources=sorted({t.source for t in totals}),
            samples=max((t.intervals for t in totals), default=0),
            covered_s=covered_s,
            elapsed_s=elapsed_s,
            coverage=coverage,
            wraps=sum(t.wraps for t in totals),
            resets=sum(t.resets for t in totals),
            estimated_uj=sum(t.estimated_uj for t in totals),
            estimated_components=estimated_components,
            unmeasured=not totals and bool(unmeasured_nodes),
            unmeasured_nodes=unmeasured_nodes,
        ),
    )


def step_view(steps: StepTotals, job_by_component: dict[str, int] | None = None) -> list[StepOut]:
    """Return a job's steps (batch, extern, then numbered ascending) with their energy.

    The job's energy that no step carries (intervals without step CPU time, or no step
    information at all) is the last entry, :data:`OUTSIDE_STEP`, per component
    ``job − Σ steps``, so that the entries always add up to the job exactly; there is none
    when nothing is left.
    """
    steps = {step: dict(parts) for step, parts in steps.items()}
    if job_by_component is not None:
        rest = {
            c: job_by_component.get(c, 0) - sum(parts.get(c, 0) for parts in steps.values())
            for c in sorted({*job_by_component, *(c for p in steps.values() for c in p)})
        }
        if any(rest.values()):
            outside = steps.setdefault(OUTSIDE_STEP, {})
            for component, energy in rest.items():
                if energy:
                    outside[component] = outside.get(component, 0) + energy
    out = []
    for step in sorted(steps, key=step_sort_key):
        by_component = {c: steps[step][c] for c in sorted(steps[step])}
        energy_uj = sum(by_component.values())
        out.append(
            StepOut(
                step=step, energy_uj=energy_uj, energy_kwh=carbon.energy_kwh(energy_uj),
                by_component=by_component,
            )
        )
    return out


@contextmanager
def read_session(request: Request) -> Iterator[Session]:
    """Yield a session for a lookup, in autocommit: no BEGIN and ROLLBACK round trips (a
    lookup is one statement), and psycopg keeps its prepared statements (a ROLLBACK drops
    them), so PostgreSQL plans a lookup once per connection instead of once per request."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


@contextmanager
def list_session(request: Request) -> Iterator[Session]:
    """Yield a session for a page of jobs: a transaction, committed (psycopg keeps its
    prepared statements), with JIT off on PostgreSQL. A page's estimated cost (a hundred
    jobs' parts, and rows per job overestimated when a table's rows of a job lie together)
    passes ``jit_above_cost``: compiling took 45-80 ms a page, reading it 1-20 ms."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL jit = off"))
        yield session
        session.commit()


def view_of(detail: JobDetail, labels: ClusterLabels) -> JobOut:
    """Return the JSON of a job read with :func:`lookup_details` or :func:`page_details`."""
    return job_view(detail.job, detail.totals, detail.groups, detail.phases, labels,
                    detail.steps, detail.seen, detail.marks)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="One job's energy and emissions")
async def get_job(
    request: Request,
    job_id: str,
    cluster: Annotated[str | None, Query(description="needed when job_id is on two")] = None,
) -> JobOut:
    """Return a job; 404 if unknown, 403 if the caller may not read it (``private_data =
    jobs``: another user's, outside the accounts they coordinate), 409 if the id exists on
    several clusters."""
    return await run_in_threadpool(lookup_job, request, get_access(request), job_id, cluster)


def lookup_job(request: Request, access: Access, job_id: str, cluster: str | None) -> JobOut:
    """:func:`get_job`, in a worker thread."""
    with read_session(request) as session:
        found = lookup_details(session, job_id, cluster)
        details = [d for d in found if access.sees_job(d.job.user, d.job.uid, d.job.account)]
        if found and not details:
            raise HTTPException(
                status_code=403,
                detail=f"job {job_id} is not visible to {access.caller.describe()}: it belongs "
                       "to another user (private_data includes jobs)")
        if not details:
            where = f" on cluster {cluster}" if cluster is not None else ""
            raise HTTPException(status_code=404, detail=f"job {job_id} not found{where}")
        if len(details) > 1:
            clusters = ", ".join(d.job.cluster for d in details)
            raise HTTPException(
                status_code=409,
                detail=f"job {job_id} exists on clusters {clusters}: pass ?cluster=",
            )
        return view_of(details[0], DetailLabels(session, details))


@router.get("/jobs", response_model=JobList, summary="Jobs matching filters, newest first")
async def get_jobs(
    request: Request,
    cluster: str | None = None,
    user: str | None = None,
    account: str | None = None,
    partition: str | None = None,
    state: str | None = None,
    start: Annotated[str | None, Query(description="ISO 8601 or epoch s")] = None,
    end: Annotated[str | None, Query(description="ISO 8601 or epoch s")] = None,
    job_id: Annotated[str | None, Query(description="comma-separated job ids")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    after: Annotated[str | None, Query(
        max_length=MAX_CURSOR_LEN,
        description="the `next` of the previous page: the jobs that follow it (with the same "
        "filters), without counting the rows before (offset, if any, then skips from there)",
    )] = None,
    count: Annotated[bool, Query(
        description="false: do not count the matching jobs (with millions of them counting "
        "costs more than the page); total is then a lower bound and total_exact false",
    )] = True,
) -> JobList:
    """Return one page of jobs overlapping [start, end) with the other filters, among those
    the caller may read; ``next`` pages on from its last job (absent on the last page)."""
    access = get_access(request)
    job_ids = None
    if job_id is not None:
        job_ids = tuple(dict.fromkeys(p.strip() for p in job_id.split(",") if p.strip()))
        if len(job_ids) > MAX_JOB_IDS:
            raise HTTPException(
                status_code=422,
                detail=f"job_id: {len(job_ids)} job ids, at most {MAX_JOB_IDS} per request",
            )
    cursor = None
    if after is not None:
        try:
            cursor = Cursor.decode(after)
        except BadCursor as err:
            raise HTTPException(status_code=422, detail=f"after: {err}") from err
    filters = JobFilters(
        cluster=cluster, user=user, account=account, partition=partition, state=state,
        start=parse_time(start, "start"), end=parse_time(end, "end"), job_ids=job_ids,
        visible=access.scope("jobs"),
    )
    if filters.start is not None and filters.end is not None and filters.end < filters.start:
        raise HTTPException(
            status_code=422,
            detail=f"end {filters.end.isoformat()} is before start {filters.start.isoformat()}",
        )
    return await run_in_threadpool(list_page, request, filters, limit, offset, cursor, count)


def list_page(
    request: Request, filters: JobFilters, limit: int, offset: int, cursor: Cursor | None,
    count: bool = True,
) -> JobList:
    """:func:`get_jobs`' reads, in a worker thread.

    ``total`` is counted only when the page does not tell it: a page by offset that is the
    last one (not empty, or the first) ends the result. With ``count`` false it is not
    counted at all: ``total`` is then a lower bound (the jobs up to the end of the page when
    it is not empty, one more when there are more) and ``total_exact`` false.
    """
    with list_session(request) as session:
        details, more = page_details(session, filters, limit, offset, cursor)
        total_exact = True
        if cursor is None and not more and (offset == 0 or details):
            total = offset + len(details)
        elif count:
            total = count_jobs(session, filters)
        else:
            # A lower bound: a page that is not empty has its offset's rows before it.
            total = (offset if details else 0) + len(details) + more
            total_exact = False
        labels = DetailLabels(session, details)
        return JobList(
            jobs=[view_of(detail, labels) for detail in details],
            total=total,
            limit=limit,
            offset=offset,
            next=Cursor.of(details[-1].job).encode() if more and details else None,
            total_exact=total_exact,
        )
