"""``GET /api/v1/jobs/{job_id}`` and ``GET /api/v1/jobs`` (answers built by ``api/job_view.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from jobenergy.api.access import Access
from jobenergy.api.authenticate import get_access
from jobenergy.api.job_filters import (
    BadFilter,
    JobFilters,
    job_values,
    node_values,
    state_values,
    values,
)
from jobenergy.api.job_lists import MAX_CURSOR_LEN, BadCursor, Cursor, count_jobs, page_details
from jobenergy.api.job_lookup import lookup_details
from jobenergy.api.job_view import DetailLabels, view_of
from jobenergy.api.schemas import JobList, JobOut
from jobenergy.core.slurm_time import SlurmTimeError, parse_slurm_time

router = APIRouter(prefix="/api/v1", tags=["jobs"])

MAX_LIMIT = 10_000
#: Largest ``offset`` (a signed 64-bit integer in SQL).
MAX_OFFSET = 2**63 - 1
#: What ``start``/``end`` take (``core/slurm_time.py``).
TIME_HELP = ("ISO 8601 (UTC unless zoned), epoch s, or sacct's forms: now-2hours, today, "
             "11/20, ...")


def parse_time(value: str | None, name: str) -> datetime | None:
    """Parse a ``start``/``end`` parameter with the one time parser of jobenergy
    (``core/slurm_time.py``): ISO 8601, epoch seconds, or any of sacct's forms (``now-2hours``,
    ``today``); a time without a zone is UTC. Between 1970 and 2100.

    Raises:
        HTTPException: 422 naming the parameter when the value is none of them, or out of
            range.
    """
    if value is None or value == "":
        return None
    try:
        return parse_slurm_time(value, epoch=True, tz=UTC)
    except SlurmTimeError as err:
        raise HTTPException(status_code=422, detail=f"{name}: {err}") from err


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


ListQuery = Annotated[list[str] | None, Query(
    description="comma-separated and/or repeated; a job matches any of them")]


@router.get("/jobs", response_model=JobList, summary="Jobs matching filters, newest first")
async def get_jobs(
    request: Request,
    cluster: ListQuery = None,
    user: Annotated[list[str] | None, Query(
        description="user names, or uids (all digits); comma-separated and/or repeated")] = None,
    account: ListQuery = None,
    partition: ListQuery = None,
    state: Annotated[list[str] | None, Query(
        description="Slurm states, names or codes as sacct -s takes them (CD, F, CA, TO, "
        "...); comma-separated and/or repeated")] = None,
    name: Annotated[list[str] | None, Query(
        description="job names, exactly (repeated: a name may hold commas)")] = None,
    nodelist: Annotated[list[str] | None, Query(
        description="jobs that ran on any of these nodes: hostlist expressions (n[1-4],gpu7)"
    )] = None,
    start: Annotated[str | None, Query(description=TIME_HELP)] = None,
    end: Annotated[str | None, Query(description=TIME_HELP)] = None,
    job_id: Annotated[list[str] | None, Query(
        description="job ids as sacct -j takes them: raw ids, 1234_5 (array task), 1234+1 (het "
        "component); 1234 also selects every task / component of array / het job 1234")] = None,
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
    the caller may read; ``next`` pages on from its last job (absent on the last page).

    Each list filter takes at most 1000 values (job ids: 10 000; nodes counted expanded).
    """
    access = get_access(request)
    cursor = None
    if after is not None:
        try:
            cursor = Cursor.decode(after)
        except BadCursor as err:
            raise HTTPException(status_code=422, detail=f"after: {err}") from err
    try:
        filters = JobFilters(
            clusters=values(cluster, "cluster"), users=values(user, "user"),
            accounts=values(account, "account"), partitions=values(partition, "partition"),
            states=state_values(state), names=values(name, "name", split=False),
            nodes=node_values(nodelist), jobs=job_values(job_id),
            start=parse_time(start, "start"), end=parse_time(end, "end"),
            visible=access.scope("jobs"),
        )
    except BadFilter as err:
        raise HTTPException(status_code=422, detail=str(err)) from err
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
