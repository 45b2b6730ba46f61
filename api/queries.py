"""SQL for the read API: lookups and GROUP BY over the ``job_energy``/``node_energy`` totals.

Nothing here reads ``energy_interval``: the totals are maintained at ingest (DESIGN.md
decision 8), so a job lookup costs a primary-key range scan however long the job ran.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, tuple_
from sqlalchemy.orm import Session

from jobenergy.api.access import Visible
from jobenergy.collector.models import (
    Job,
    JobEnergy,
    JobNode,
    JobStepEnergy,
    NodeEnergy,
    NodeProgress,
)


@dataclass(frozen=True)
class JobFilters:
    """Filters of ``GET /api/v1/jobs``; None means no filter."""

    cluster: str | None = None
    user: str | None = None
    account: str | None = None
    partition: str | None = None
    state: str | None = None
    start: datetime | None = None  # jobs still running at or after this time
    end: datetime | None = None  # jobs started before this time
    job_ids: tuple[str, ...] | None = None
    visible: Visible | None = None  # the caller's PrivateData scope (api/access.py)


def visible_clause(scope: Visible) -> ColumnElement[bool]:
    """Return the SQL condition of the jobs in ``scope``: the caller's own (by name or uid)
    and those of the accounts they coordinate."""
    clauses: list[ColumnElement[bool]] = []
    if scope.user is not None:
        clauses.append(Job.user == scope.user)
    if scope.uid is not None:
        clauses.append(Job.uid == scope.uid)
    if scope.accounts:
        clauses.append(Job.account.in_(sorted(scope.accounts)))
    return or_(*clauses) if clauses else false()


@dataclass(frozen=True)
class SourceTotal:
    """One (node, component, source) total of a job."""

    node: str
    component: str
    source: str
    device_name: str | None
    energy_uj: int
    estimated_uj: int
    intervals: int
    covered_s: float
    wraps: int
    resets: int


def _where(filters: JobFilters) -> list[Any]:
    clauses: list[Any] = []
    if filters.cluster is not None:
        clauses.append(Job.cluster == filters.cluster)
    if filters.user is not None:
        clauses.append(Job.user == filters.user)
    if filters.account is not None:
        clauses.append(Job.account == filters.account)
    if filters.partition is not None:
        clauses.append(Job.partition == filters.partition)
    if filters.state is not None:
        clauses.append(func.upper(Job.state) == filters.state.upper())
    # Overlap with [start, end): unknown times (no Slurm event yet) do not exclude a job.
    if filters.start is not None:
        clauses.append(or_(Job.end_at.is_(None), Job.end_at >= filters.start))
    if filters.end is not None:
        # begin_at: the Slurm start, else the first energy seen for the job.
        clauses.append(or_(Job.begin_at.is_(None), Job.begin_at < filters.end))
    if filters.job_ids is not None:
        clauses.append(Job.job_id.in_(filters.job_ids))
    if filters.visible is not None:
        clauses.append(visible_clause(filters.visible))
    return clauses


def _page(filters: JobFilters, limit: int, offset: int) -> Select[Any]:
    return (
        select(Job)
        .where(*_where(filters))
        .order_by(Job.start_at.desc().nulls_last(), Job.cluster, Job.job_id)
        .limit(limit)
        .offset(offset)
    )


def count_jobs(session: Session, filters: JobFilters) -> int:
    """Return how many jobs match ``filters``."""
    return session.scalar(select(func.count()).select_from(Job).where(*_where(filters))) or 0


def list_jobs(session: Session, filters: JobFilters, limit: int, offset: int) -> list[Job]:
    """Return one page of jobs, newest start first."""
    return list(session.scalars(_page(filters, limit, offset)))


def find_job(session: Session, job_id: str, cluster: str | None) -> list[Job]:
    """Return the jobs with ``job_id`` (on ``cluster`` when given): 0, 1 or several."""
    stmt = select(Job).where(Job.job_id == job_id)
    if cluster is not None:
        stmt = stmt.where(Job.cluster == cluster)
    return list(session.scalars(stmt.order_by(Job.cluster)))


def _energy_select() -> Select[Any]:
    je = JobEnergy
    return select(
        je.cluster, je.job_id, je.node, je.component, je.source,
        func.max(je.device_name), func.sum(je.energy_uj), func.sum(je.estimated_uj),
        func.sum(je.intervals), func.sum(je.covered_s), func.sum(je.wraps), func.sum(je.resets),
    ).group_by(je.cluster, je.job_id, je.node, je.component, je.source)


def _collect(rows: Any) -> dict[tuple[str, str], list[SourceTotal]]:
    totals: dict[tuple[str, str], list[SourceTotal]] = defaultdict(list)
    for row in rows:
        cluster, job_id, node, component, source, device, energy, est, n, cov, wraps, resets = row
        totals[(cluster, job_id)].append(
            SourceTotal(
                node=node, component=component, source=source, device_name=device,
                energy_uj=int(energy), estimated_uj=int(est), intervals=int(n),
                covered_s=float(cov), wraps=int(wraps), resets=int(resets),
            )
        )
    return totals


def energy_for_job(session: Session, cluster: str, job_id: str) -> list[SourceTotal]:
    """Return a job's per-source totals (GROUP BY over its ``job_energy`` rows)."""
    stmt = _energy_select().where(JobEnergy.cluster == cluster, JobEnergy.job_id == job_id)
    return _collect(session.execute(stmt)).get((cluster, job_id), [])


def energy_for_page(
    session: Session, filters: JobFilters, limit: int, offset: int
) -> dict[tuple[str, str], list[SourceTotal]]:
    """Return per-source totals of every job of one page, in one query (no N+1)."""
    page = _page(filters, limit, offset).with_only_columns(Job.cluster, Job.job_id).subquery()
    stmt = _energy_select().join(
        page, and_(JobEnergy.cluster == page.c.cluster, JobEnergy.job_id == page.c.job_id)
    )
    return _collect(session.execute(stmt))


StepTotals = dict[str, dict[str, int]]  # step -> component -> µJ


def _collect_steps(rows: Any) -> dict[tuple[str, str], StepTotals]:
    steps: dict[tuple[str, str], StepTotals] = defaultdict(dict)
    for cluster, job_id, step, component, energy in rows:
        steps[(cluster, job_id)].setdefault(step, {})[component] = int(energy)
    return steps


def _steps_select() -> Select[Any]:
    se = JobStepEnergy
    return select(se.cluster, se.job_id, se.step, se.component, se.energy_uj)


def steps_for_job(session: Session, cluster: str, job_id: str) -> StepTotals:
    """Return a job's energy per step and component (its ``job_step_energy`` rows)."""
    stmt = _steps_select().where(JobStepEnergy.cluster == cluster, JobStepEnergy.job_id == job_id)
    return _collect_steps(session.execute(stmt)).get((cluster, job_id), {})


def steps_for_page(
    session: Session, filters: JobFilters, limit: int, offset: int
) -> dict[tuple[str, str], StepTotals]:
    """Return per-step energy of every job of one page, in one query (no N+1)."""
    page = _page(filters, limit, offset).with_only_columns(Job.cluster, Job.job_id).subquery()
    stmt = _steps_select().join(
        page,
        and_(JobStepEnergy.cluster == page.c.cluster, JobStepEnergy.job_id == page.c.job_id),
    )
    return _collect_steps(session.execute(stmt))


_CHUNK = 1000


def seen_nodes(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], set[str]]:
    """Return the nodes whose agents saw each job (``job_node``; primary-key lookups)."""
    keys = sorted(set(keys))
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    jn = JobNode
    for i in range(0, len(keys), _CHUNK):
        stmt = select(jn.cluster, jn.job_id, jn.node).where(
            tuple_(jn.cluster, jn.job_id).in_(keys[i : i + _CHUNK])
        )
        for cluster, job_id, node in session.execute(stmt):
            out[(cluster, job_id)].add(node)
    return out


@dataclass(frozen=True)
class NodeMark:
    """A node's high-water mark: its latest ingested interval end and that interval's sources."""

    last_at: datetime
    last_sources: int


def node_marks(
    session: Session, nodes: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], NodeMark]:
    """Return the ``node_progress`` of each (cluster, node) (primary-key lookups)."""
    pairs = sorted(set(nodes))
    out: dict[tuple[str, str], NodeMark] = {}
    np = NodeProgress
    for i in range(0, len(pairs), _CHUNK):
        stmt = select(np.cluster, np.node, np.last_at, np.last_sources).where(
            tuple_(np.cluster, np.node).in_(pairs[i : i + _CHUNK])
        )
        for cluster, node, last_at, sources in session.execute(stmt):
            out[(cluster, node)] = NodeMark(last_at, int(sources))
    return out


def node_totals(session: Session, cluster: str | None) -> list[dict[str, Any]]:
    """Return per (cluster, node, component) measured, unattributed and attributed µJ."""
    ne, je = NodeEnergy, JobEnergy
    measured = (
        select(
            ne.cluster, ne.node, ne.component,
            func.sum(ne.measured_uj).label("measured_uj"),
            func.sum(ne.unattributed_uj).label("unattributed_uj"),
            func.sum(ne.intervals).label("intervals"),
            func.min(ne.first_at).label("first_at"),
            func.max(ne.last_at).label("last_at"),
        )
        .group_by(ne.cluster, ne.node, ne.component)
    )
    attributed = (
        select(je.cluster, je.node, je.component, func.sum(je.energy_uj).label("attributed_uj"))
        .group_by(je.cluster, je.node, je.component)
    )
    if cluster is not None:
        measured = measured.where(ne.cluster == cluster)
        attributed = attributed.where(je.cluster == cluster)
    m, a = measured.subquery(), attributed.subquery()
    stmt = (
        select(
            m.c.cluster, m.c.node, m.c.component, m.c.measured_uj, m.c.unattributed_uj,
            func.coalesce(a.c.attributed_uj, 0), m.c.intervals, m.c.first_at, m.c.last_at,
        )
        .outerjoin(
            a,
            and_(a.c.cluster == m.c.cluster, a.c.node == m.c.node, a.c.component == m.c.component),
        )
        .order_by(m.c.cluster, m.c.node, m.c.component)
    )
    keys = ("cluster", "node", "component", "measured_uj", "unattributed_uj", "attributed_uj",
            "intervals", "first_at", "last_at")
    out = []
    for row in session.execute(stmt):
        item = dict(zip(keys, row, strict=True))
        for key in ("measured_uj", "unattributed_uj", "attributed_uj", "intervals"):
            item[key] = int(item[key])
        out.append(item)
    return out
