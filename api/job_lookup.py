"""Reading jobs with what their JSON is built from: the job lookup, and the parts of a page.

Nothing here reads ``energy_interval``: the totals are maintained at ingest (DESIGN.md
decision 8), so a job lookup costs primary-key range scans however long the job ran.

On PostgreSQL a job lookup is one statement (and so is a page of jobs,
:mod:`jobenergy.api.job_lists`): the job rows with, per row, what the job's JSON is built from
(per-source totals, nodes seen, the nodes' high-water marks, factor groups, phases, steps, the
cluster's factors) as JSON arrays (:data:`_DETAIL_SQL`). A settled job's parts are read from
its materialised detail (``job_detail``, ``collector/job_details.py``); a job that changed
lately has them aggregated by correlated subqueries. Other backends read the same with a
query per table for all the jobs at once (:func:`_details_apart`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Select, and_, bindparam, literal_column, select, tuple_
from sqlalchemy.orm import Session

from jobenergy.api.factors_view import FactorGroup, factor_groups, phases_for_jobs
from jobenergy.collector import models
from jobenergy.collector.factors import DEFAULTS
from jobenergy.collector.job_details import LIVE_NODES_SQL, LIVE_SQL, NODES, SHAPE
from jobenergy.collector.models import Job, JobEnergy, JobNode, JobStepEnergy, NodeProgress
from jobenergy.core.units import UJ_PER_J, UJ_PER_KWH


class SourceTotal(NamedTuple):
    """One (node, component, source) total of a job (a tuple: a page makes thousands)."""

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


class NodeMark(NamedTuple):
    """A node's high-water mark: its latest ingested interval end and that interval's sources."""

    last_at: datetime
    last_sources: int


StepTotals = dict[str, dict[str, int]]  # step -> component -> µJ


@dataclass(frozen=True)
class ConfigRow:
    """The ``cluster_config`` columns that a job's JSON reads (as :func:`load_configs`)."""

    pue: float | None
    carbon_source: str | None
    carbon_g_per_kwh: float | None
    carbon_label: str | None


@dataclass
class JobDetail:
    """A job's row and everything its JSON is built from (``api/job_view.py``).

    ``configs``: the job's cluster's ``cluster_config`` row and the defaults row, as
    :func:`jobenergy.collector.factors.load_configs` returns them; None when not fetched
    with the job (then :class:`~jobenergy.api.factors_view.ClusterLabels` reads them).
    """

    job: Any  # a Row of the job table's columns (attributes as Job's)
    totals: list[SourceTotal] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    marks: dict[tuple[str, str], NodeMark] = field(default_factory=dict)
    groups: list[FactorGroup] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    steps: StepTotals = field(default_factory=dict)
    configs: tuple[ConfigRow | None, ConfigRow | None] | None = None


def job_nodes(job: Any, totals: Iterable[SourceTotal], seen: set[str]) -> set[str]:
    """Every node of a job: Slurm's list, the nodes whose agents saw it, those with energy."""
    return set(job.nodes or []) | seen | {t.node for t in totals}


_J = Job.__table__


# --- What a job's JSON is built from ------------------------------------------------------

_JE, _JN, _NP = JobEnergy.__table__, JobNode.__table__, NodeProgress.__table__
_SE, _JD = JobStepEnergy.__table__, models.JobDetail.__table__  # JobDetail: below, the API's


def _part(name: str) -> str:
    """A part of the job row ``p``, read live unless it has a materialised detail ``d`` of
    its parts' version (:func:`_with_details` joins it; then NULL: the detail, selected
    whole, has it)."""
    return f"(CASE WHEN d.detail IS NULL THEN {LIVE_SQL[name]} END)"


#: What a job's JSON is built from, as expressions of the job row ``p`` of the statement they
#: are in (PostgreSQL): its parts (``collector/job_details.py``: from its ``job_detail`` row
#: ``d`` once the job settled, else correlated subqueries, each one JSON array read by
#: primary-key range scans), the marks of the nodes of the job (:func:`job_nodes`, a
#: ``= ANY(array)`` index scan of the small ``node_progress``) and the cluster's factors. The
#: SQL is fixed text, so that nothing is built per request.
_DETAIL_SQL = {
    **{name: _part(name) for name in LIVE_SQL},
    # Parsed once, in Python (:func:`_detail_of_pg`), however many parts it holds.
    "stored": "d.detail",
    "marks": f"""(SELECT json_agg(json_build_array(
    m.node, timezone('UTC', m.last_at), m.last_sources))
  FROM node_progress m
  WHERE m.cluster = p.cluster AND m.node = ANY (ARRAY(
    SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(p.nodes) = 'array' THEN p.nodes END)
    UNION ALL SELECT json_array_elements_text(d.detail -> '{NODES}')
      WHERE json_typeof(d.detail -> '{NODES}') = 'array'
    UNION ALL SELECT k.node FROM ({LIVE_NODES_SQL}) k WHERE d.detail IS NULL)))""",
    "configs": """(SELECT json_agg(json_build_array(
    c.cluster, c.pue, c.carbon_source, c.carbon_g_per_kwh, c.carbon_label))
  FROM cluster_config c WHERE c.cluster IN (p.cluster, ''))""",
}
_DETAIL_COLUMNS = tuple(
    literal_column(sql).label(f"detail_{name}") for name, sql in _DETAIL_SQL.items()
)


def _with_details(stmt: Select[Any], order: Callable[[Any], tuple[Any, ...]]) -> Select[Any]:
    """Return ``stmt`` (rows of the job table's columns) as subquery ``p``, each row with
    :data:`_DETAIL_SQL`, in ``order`` (PostgreSQL). The job's materialised detail, ``d``, is
    joined only where it is of the job's parts' version and built by this code's SQL."""
    p = stmt.subquery("p")
    d = _JD.alias("d")
    current = p.outerjoin(d, and_(d.c.cluster == p.c.cluster, d.c.job_id == p.c.job_id,
                                  d.c.parts_version == p.c.parts_version,
                                  d.c.shape == literal_column(f"'{SHAPE}'"),  # hex
                                  literal_column("true" if MATERIALISED else "false")))
    return select(*p.c, *_DETAIL_COLUMNS).select_from(current).order_by(*order(p.c))


@cache
def _lookup_stmt(on_cluster: bool, materialised: bool = True) -> Select[Any]:
    """The statement of a lookup on PostgreSQL (built once per :data:`MATERIALISED`;
    parameters ``job_id``, ``cluster``)."""
    stmt = select(_J).where(_J.c.job_id == bindparam("job_id"))
    if on_cluster:
        stmt = stmt.where(_J.c.cluster == bindparam("cluster"))
    return _with_details(stmt, lambda c: (c.cluster,))


def _utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _phase(
    phase: str, model: str | None, energy_uj: int, samples: int | None, metrics: Any,
    tags: Any, first_at: datetime | None, last_at: datetime | None,
) -> dict[str, Any]:
    """One phase of a job's JSON (as ``factors_view.phases_for_jobs`` builds it)."""
    return {
        "phase": phase,
        "model": model or None,
        "energy_uj": energy_uj,
        "energy_kwh": energy_uj / UJ_PER_KWH,
        "samples": samples,
        "j_per_sample": energy_uj / UJ_PER_J / samples if samples else None,
        "metrics": dict(metrics or {}),
        "tags": dict(tags or {}),
        "start": first_at,
        "end": last_at,
    }


def _detail_of_pg(row: Any) -> JobDetail:
    """Parse the JSON columns of :data:`_DETAIL_SQL` (numbers exact: JSON integers are
    Python ints, floats print shortest-exact both ways); the parts from the materialised
    detail when there is one."""
    cluster = row.cluster
    stored = row.detail_stored
    parts = {name: stored.get(name) if stored is not None else getattr(row, f"detail_{name}")
             for name in LIVE_SQL}
    totals = [
        SourceTotal(node, component, source, device, int(energy), int(estimated),
                    int(intervals), float(covered), int(wraps), int(resets))
        for node, component, source, device, energy, estimated, intervals, covered, wraps,
        resets in parts["totals"] or ()
    ]
    marks = {
        (cluster, node): NodeMark(_utc(last_at), int(sources))  # type: ignore[arg-type]
        for node, last_at, sources in row.detail_marks or ()
    }
    groups = [
        FactorGroup(float(pue), pue_source, float(ci), ci_source, int(energy), int(facility),
                    int(co2e))
        for pue, pue_source, ci, ci_source, energy, facility, co2e in parts["groups"] or ()
    ]
    phases = [
        _phase(phase, model, int(energy), None if samples is None else int(samples), metrics,
               tags, _utc(first_at), _utc(last_at))
        for phase, model, energy, samples, metrics, tags, first_at, last_at
        in parts["phases"] or ()
    ]
    steps: StepTotals = {}
    for step, component, energy in parts["steps"] or ():
        steps.setdefault(step, {})[component] = int(energy)
    configs: dict[str, ConfigRow] = {
        name: ConfigRow(None if pue is None else float(pue), source,
                        None if ci is None else float(ci), label)
        for name, pue, source, ci, label in row.detail_configs or ()
    }
    return JobDetail(
        job=row, totals=totals, seen=set(parts["seen"] or ()), marks=marks, groups=groups,
        phases=phases, steps=steps, configs=(configs.get(cluster), configs.get(DEFAULTS)),
    )


def _details_apart(session: Session, jobs: Sequence[Any]) -> list[JobDetail]:
    """Read what the jobs' JSON is built from, a query per table for all of them (the other
    backends; on PostgreSQL :data:`_DETAIL_SQL` has it in the jobs' own statement)."""
    if not jobs:
        return []
    keys = [(job.cluster, job.job_id) for job in jobs]
    totals = energy_for_keys(session, keys)
    seen = seen_nodes(session, keys)
    marks = node_marks(session, [
        (job.cluster, node) for job, key in zip(jobs, keys, strict=True)
        for node in job_nodes(job, totals.get(key, []), seen.get(key, set()))
    ])
    groups, phases = factor_groups(session, keys), phases_for_jobs(session, keys)
    steps = steps_for_keys(session, keys)
    return [
        JobDetail(job, totals.get(key, []), seen.get(key, set()), marks, groups.get(key, []),
                  phases.get(key, []), steps.get(key, {}))
        for job, key in zip(jobs, keys, strict=True)
    ]


def _combined(session: Session) -> bool:
    return COMBINED and session.get_bind().dialect.name == "postgresql"


#: Read a job and what its JSON is built from in one statement on PostgreSQL (tests turn it
#: off to compare with the query-per-table path).
COMBINED = True
#: Read settled jobs' parts from their materialised detail (``bench/query_bench.py`` turns it
#: off to time the live parts on the same database).
MATERIALISED = True


def lookup_details(session: Session, job_id: str, cluster: str | None) -> list[JobDetail]:
    """Return the jobs with ``job_id`` (on ``cluster`` when given; 0, 1 or several, by
    cluster) with what their JSON is built from: one statement on PostgreSQL."""
    if _combined(session):
        params = {"job_id": job_id, "cluster": cluster}
        rows = session.execute(_lookup_stmt(cluster is not None, MATERIALISED), params)
        return [_detail_of_pg(row) for row in rows]
    stmt = select(_J).where(_J.c.job_id == job_id)
    if cluster is not None:
        stmt = stmt.where(_J.c.cluster == cluster)
    return _details_apart(session, list(session.execute(stmt.order_by(_J.c.cluster))))


def read_details(
    session: Session, stmt: Select[Any], order: Callable[[Any], tuple[Any, ...]]
) -> list[JobDetail]:
    """Return the jobs of ``stmt`` (rows of the job table's columns) with what their JSON is
    built from, in ``order``: one statement on PostgreSQL."""
    if not _combined(session):
        return _details_apart(session, list(session.execute(stmt)))
    return [_detail_of_pg(row) for row in session.execute(_with_details(stmt, order))]


# --- The query-per-table reads (every backend; PostgreSQL's lookups combine them) ---------

_CHUNK = 1000


def _by_keys(
    session: Session, columns: Sequence[Any], table: Any, keys: Iterable[tuple[str, str]]
) -> Iterator[Any]:
    """Yield ``columns`` of the rows of ``table`` whose (cluster, job_id) is in ``keys``
    (primary-key lookups, a query per 1000 keys)."""
    ordered = sorted(set(keys))
    for i in range(0, len(ordered), _CHUNK):
        stmt = select(*columns).where(
            tuple_(table.c.cluster, table.c.job_id).in_(ordered[i : i + _CHUNK]))
        yield from session.execute(stmt)


def energy_for_keys(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[SourceTotal]]:
    """Return the per-(node, component, source) totals of each job (its ``job_energy`` rows:
    the primary key is that, so there is one row each)."""
    je = _JE
    totals: dict[tuple[str, str], list[SourceTotal]] = defaultdict(list)
    columns = (je.c.cluster, je.c.job_id, je.c.node, je.c.component, je.c.source,
               je.c.device_name, je.c.energy_uj, je.c.estimated_uj, je.c.intervals,
               je.c.covered_s, je.c.wraps, je.c.resets)
    for row in _by_keys(session, columns, je, keys):
        cluster, job_id, node, component, source, device, energy, est, n, cov, wraps, resets = row
        totals[(cluster, job_id)].append(
            SourceTotal(
                node=node, component=component, source=source, device_name=device,
                energy_uj=int(energy), estimated_uj=int(est), intervals=int(n),
                covered_s=float(cov), wraps=int(wraps), resets=int(resets),
            )
        )
    return totals


def steps_for_keys(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], StepTotals]:
    """Return each job's energy per step and component (its ``job_step_energy`` rows)."""
    se = _SE
    steps: dict[tuple[str, str], StepTotals] = defaultdict(dict)
    columns = (se.c.cluster, se.c.job_id, se.c.step, se.c.component, se.c.energy_uj)
    for cluster, job_id, step, component, energy in _by_keys(session, columns, se, keys):
        steps[(cluster, job_id)].setdefault(step, {})[component] = int(energy)
    return steps


def seen_nodes(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], set[str]]:
    """Return the nodes whose agents saw each job (``job_node``; primary-key lookups)."""
    jn = _JN
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for cluster, job_id, node in _by_keys(session, (jn.c.cluster, jn.c.job_id, jn.c.node),
                                          jn, keys):
        out[(cluster, job_id)].add(node)
    return out


def node_marks(
    session: Session, nodes: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], NodeMark]:
    """Return the ``node_progress`` of each (cluster, node) (primary-key lookups)."""
    pairs = sorted(set(nodes))
    out: dict[tuple[str, str], NodeMark] = {}
    np_ = _NP
    for i in range(0, len(pairs), _CHUNK):
        stmt = select(np_.c.cluster, np_.c.node, np_.c.last_at, np_.c.last_sources).where(
            tuple_(np_.c.cluster, np_.c.node).in_(pairs[i : i + _CHUNK])
        )
        for cluster, node, last_at, sources in session.execute(stmt):
            out[(cluster, node)] = NodeMark(last_at, int(sources))
    return out
