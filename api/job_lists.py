"""Job lists (``GET /api/v1/jobs``): their order, and paging by OFFSET or keyset.

The filters are :mod:`jobenergy.api.job_filters`. A page is read with what its jobs' JSON is
built from (:mod:`jobenergy.api.job_lookup`): one statement on PostgreSQL. Lists page by
OFFSET or, without scanning the rows skipped, after a cursor (:class:`Cursor`, keyset
pagination).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, text, union_all
from sqlalchemy.orm import Session

from jobenergy.api.job_filters import (
    MAX_SPLIT_VALUES,
    JobFilters,
    filter_values,
    scoped_rows,
    visible_parts,
    where,
)
from jobenergy.api.job_lookup import JobDetail, read_details
from jobenergy.collector.models import BIGINT_MAX, JOB_ID_LEN, NAME_LEN, Job

_J = Job.__table__


def _order(c: Any) -> tuple[Any, ...]:
    """The order of job lists over columns ``c``: newest start first, jobs without a start
    last, then by cluster and id."""
    return c.start_at.desc().nulls_last(), c.cluster, c.job_id


ORDER = _order(_J.c)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def count_jobs(session: Session, filters: JobFilters) -> int:
    """Return how many jobs match ``filters``: in a PrivateData scope, its parts' rows
    (:func:`~jobenergy.api.job_filters.scoped_rows`, each an index-only range unless other
    filters read the rows), where the OR of them would be a bitmap scan reading every row."""
    dialect = _dialect(session)
    if not _split(filters):
        return session.scalar(
            select(func.count()).select_from(Job).where(*where(filters, dialect))) or 0
    if dialect == "postgresql":
        # Each part is an index range of one person's or account's jobs: starting parallel
        # workers (the planner's choice when its estimates are of an average user's share)
        # costs 30 ms, more than counting them.
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    assert filters.visible is not None
    rows = scoped_rows([Job.job_id], where(replace(filters, visible=None), dialect),
                       filters.visible)
    return session.scalar(select(func.count()).select_from(rows)) or 0


# --- Keyset pagination -------------------------------------------------------------------


class BadCursor(ValueError):
    """An ``after`` cursor that this API did not hand out."""


@dataclass(frozen=True)
class Cursor:
    """A position in the job order: the sort key of the last row of a page."""

    start_at: datetime | None
    cluster: str
    job_id: str

    _VERSION = 1

    def encode(self) -> str:
        """Return the opaque text of the cursor (URL-safe base64 of a JSON array)."""
        start = None if self.start_at is None else self.start_at.astimezone(UTC).isoformat()
        raw = json.dumps([self._VERSION, start, self.cluster, self.job_id],
                         separators=(",", ":"), ensure_ascii=False)
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse a cursor made by :meth:`encode`.

        Raises:
            BadCursor: ``text`` is not one.
        """
        if len(text) > MAX_CURSOR_LEN or not _CURSOR_CHARS.fullmatch(text):
            raise BadCursor("not a cursor returned by this API")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            value = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as err:
            raise BadCursor("not a cursor returned by this API") from err
        if not (isinstance(value, list) and len(value) == 4 and type(value[0]) is int
                and value[0] == cls._VERSION):
            raise BadCursor("not a cursor returned by this API")
        _, start, cluster, job_id = value
        if not (isinstance(cluster, str) and isinstance(job_id, str)
                and 0 < len(cluster) <= NAME_LEN and 0 < len(job_id) <= JOB_ID_LEN
                and "\x00" not in cluster + job_id):
            raise BadCursor("not a cursor returned by this API")
        start_at = None
        if start is not None:
            if not isinstance(start, str):
                raise BadCursor("not a cursor returned by this API")
            try:
                start_at = datetime.fromisoformat(start)
            except ValueError as err:
                raise BadCursor("not a cursor returned by this API") from err
            if start_at.tzinfo is None or not MIN_TIME <= start_at <= MAX_TIME:
                raise BadCursor("not a cursor returned by this API")
            start_at = start_at.astimezone(UTC)
        return cls(start_at, cluster, job_id)

    @classmethod
    def of(cls, job: Any) -> Cursor:
        """Return the cursor just after ``job`` (a row with the job table's columns)."""
        return cls(job.start_at, job.cluster, job.job_id)


#: Longest cursor text: the longest cluster name and job id, 4 UTF-8 bytes a character, fit.
MAX_CURSOR_LEN = 2048
_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]+")
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2100, 1, 1, tzinfo=UTC)


def _split(filters: JobFilters) -> bool:
    """Whether a PrivateData scope is read part by part: while the caller's filters are short
    (every part repeats them)."""
    return filters.visible is not None and filter_values(filters) <= MAX_SPLIT_VALUES


def _scans(filters: JobFilters, dialect: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """The WHERE conditions of each part of a list, as (read in order and limited, read
    whole): one part, or one per part of the caller's PrivateData scope
    (:func:`~jobenergy.api.job_filters.visible_parts`)."""
    if not _split(filters):
        return [where(filters, dialect)], []
    assert filters.visible is not None
    common = where(replace(filters, visible=None), dialect)
    parts = visible_parts(filters.visible)
    return ([[*common, part] for part in parts.ranges],
            [[*common, part] for part in parts.strays])


def _page(
    filters: JobFilters, dialect: str, limit: int, offset: int, after: Cursor | None
) -> Select[Any]:
    """The jobs of a page (all the job table's columns), in :data:`ORDER`.

    After a cursor, the rows that follow it are: those with its start and a greater (cluster,
    job_id), those with an earlier start, those without a start; after a cursor without a
    start, those without a start and a greater (cluster, job_id). Each part, for each part of
    the caller's scope (:func:`_scans`), is its own ordered, limited scan with plain
    conditions, so that an index in :data:`ORDER` (or the planner's estimates) serves each
    from the cursor on; an OR of them could only be a filter, or be misjudged as a few rows
    worth sorting. The parts are disjoint, so their union is the page's rows, once each.
    """
    if after is None:
        spans: list[tuple[Any, ...]] = [()]
    else:
        # Not a row comparison: PostgreSQL estimates one by its first column alone, so with
        # one cluster (cluster > 'c': no row) it priced a walk of the primary key from the
        # cursor as a few rows, and took it (1.5 s at 10 M jobs) over the list's own index.
        key = or_(_J.c.cluster > after.cluster,
                  and_(_J.c.cluster == after.cluster, _J.c.job_id > after.job_id))
        # Within a part the whole ORDER is said, even where start_at is one value or NULL:
        # the planner then reads the part in an index's order (IS NULL does not make
        # start_at a constant to it).
        if after.start_at is None:
            spans = [(_J.c.start_at.is_(None), key)]
        else:
            spans = [(_J.c.start_at == after.start_at, key), (_J.c.start_at < after.start_at,),
                     (_J.c.start_at.is_(None),)]
    ranges, strays = _scans(filters, dialect)
    scans = [[*conditions, *span] for conditions in ranges for span in spans]
    if len(scans) == 1 and not strays:
        return select(_J).where(*scans[0]).order_by(*ORDER).limit(limit).offset(offset)
    enough = min(offset + limit, BIGINT_MAX)  # each part's rows up to the page's last
    parts = [select(_J).where(*scan).order_by(*ORDER).limit(enough).subquery() for scan in scans]
    parts += [select(_J).where(*conditions, *span).subquery()
              for conditions in strays for span in spans]
    both = union_all(*(select(part) for part in parts)).subquery()
    return select(*both.c).order_by(*_order(both.c)).limit(limit).offset(offset)


def page_details(
    session: Session, filters: JobFilters, limit: int, offset: int = 0,
    after: Cursor | None = None,
) -> tuple[list[JobDetail], bool]:
    """Return one page of jobs (``limit`` after ``offset`` rows, after ``after``) with what
    their JSON is built from, and whether more jobs follow. One statement on PostgreSQL."""
    stmt = _page(filters, _dialect(session), limit + 1, offset, after)
    details = read_details(session, stmt, order=_order)
    return details[:limit], len(details) > limit
