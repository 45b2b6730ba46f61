"""The filters of job lists (``GET /api/v1/jobs``), as sacct's options select jobs.

Each filter is a list of values, any of which matches (sacct's comma lists): clusters
(``-M``), users (``-u``: names, or uids for all-digit values), accounts (``-A``), partitions
(``-r``), states (``-s``: Slurm's names, codes resolved by ``core/slurm_states.py``), job names
(``--name``), nodes (``-N``: jobs that ran on any of them) and job ids (``-j``: raw ids, array
tasks ``1234_5``, het components ``1234+1``; a plain ``1234`` also selects every task of array
1234 and every component of het job 1234, ``core/slurm_jobids.py``). The time window selects
the jobs that overlap it.

Whatever the filters, the caller's PrivateData scope (:func:`visible_clause`, from
``api/access.py``) is ANDed to them: no filter widens what a caller may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import hostlist
from sqlalchemy import (
    ColumnElement,
    String,
    Subquery,
    and_,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql

from jobenergy.api.access import Visible
from jobenergy.collector.models import Job, JobNode
from jobenergy.core.schema import MAX_UID
from jobenergy.core.slurm_jobids import BadJobId, JobSelector, parse_job_selectors, split_list
from jobenergy.core.slurm_states import UnknownState, parse_states

#: Most values of one list filter (job ids: :data:`MAX_JOB_IDS`), nodes counted expanded.
MAX_LIST = 1000
#: Most job ids of one ``job_id`` filter.
MAX_JOB_IDS = 10_000
#: Up to this many coordinated accounts, a list reads each one's jobs as its own part
#: (:func:`visible_parts`); beyond, all of them as one part, sorted.
MAX_ACCOUNT_PARTS = 8
#: A list or count reads a scope part by part only while the caller's own filters hold at most
#: this many values: every part repeats them (SQLite numbers each copy of a value, and has a
#: limit), and long lists select their few rows well under the scope's OR.
MAX_SPLIT_VALUES = 64


class BadFilter(ValueError):
    """A filter value the API cannot read (the message names the parameter)."""


@dataclass(frozen=True)
class JobFilters:
    """Filters of ``GET /api/v1/jobs``: a job matches when, for every filter that is not
    None, it matches one of its values."""

    clusters: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None  # names; all-digit ones also match that uid
    accounts: tuple[str, ...] | None = None
    partitions: tuple[str, ...] | None = None
    states: tuple[str, ...] | None = None  # Slurm's long names, upper case
    names: tuple[str, ...] | None = None  # job names, exactly
    nodes: tuple[str, ...] | None = None  # jobs that ran on any of these nodes
    jobs: tuple[JobSelector, ...] | None = None
    start: datetime | None = None  # jobs still running at or after this time
    end: datetime | None = None  # jobs started before this time
    visible: Visible | None = None  # the caller's PrivateData scope (api/access.py)


def filter_values(filters: JobFilters) -> int:
    """Return how many values the filters of a list hold (a job id is matched three ways)."""
    lists = (filters.clusters, filters.users, filters.accounts, filters.partitions,
             filters.states, filters.names, filters.nodes)
    return sum(len(values) for values in lists if values) + 3 * len(filters.jobs or ())


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
class ScopeParts:
    """The jobs of a PrivateData scope as disjoint conditions (:func:`visible_parts`).

    ``ranges`` are each a range of one index in the list's order: a page reads the first rows
    of each. ``strays`` are a uid's jobs under another name than the caller's: none where
    names and uids agree, so read whole (an index range too). With a LIMIT the planner would
    take them for most of the uid's jobs (it assumes uid and name independent) and read
    every job in the list's order looking for them.
    """

    ranges: list[ColumnElement[bool]]
    strays: list[ColumnElement[bool]]


def visible_parts(scope: Visible, ordered: bool = True) -> ScopeParts:
    """Return the jobs of ``scope`` as disjoint parts, each a range of one index.

    The caller's own jobs by name (``ix_job_user_start``); those of their uid without a name
    yet (``ix_job_uid_start``: uid, then user), and under another name (strays: two ranges of
    the same index); then each coordinated account's other jobs (``ix_job_account_start``). A
    list page merges the parts (``api/job_lists.py``): a few rows of each, however few or old
    the caller's jobs. :func:`visible_clause`'s OR is one filter over every job in the list's
    order, which the planner reads to the end for a caller without recent jobs.

    Not ``ordered`` (counts and sums): the accounts are one part, so that their jobs, which
    share heap pages, are read in one pass.
    """
    ranges: list[ColumnElement[bool]] = []
    strays: list[ColumnElement[bool]] = []
    others: list[ColumnElement[bool]] = []  # not the caller's own: for the accounts' parts
    if scope.user is not None:
        ranges.append(Job.user == scope.user)
        others.append(Job.user.is_distinct_from(scope.user))
    if scope.uid is not None:
        mine = Job.uid == scope.uid
        if scope.user is None:
            ranges.append(mine)
        else:
            ranges.append(and_(mine, Job.user.is_(None)))
            strays += [and_(mine, Job.user < scope.user), and_(mine, Job.user > scope.user)]
        others.append(Job.uid.is_distinct_from(scope.uid))
    accounts = sorted(scope.accounts)
    if len(accounts) > MAX_ACCOUNT_PARTS or (accounts and not ordered):
        ranges.append(and_(Job.account.in_(accounts), *others))
    else:
        ranges.extend(and_(Job.account == account, *others) for account in accounts)
    if not ranges and not strays:
        ranges.append(false())
    return ScopeParts(ranges, strays)


def scoped_rows(columns: list[Any], conditions: list[Any], scope: Visible) -> Subquery:
    """Return ``columns`` of the jobs in ``scope`` that meet ``conditions``, as a subquery:
    the UNION ALL of the scope's disjoint parts (:func:`visible_parts`), each read from its
    own index, instead of one scan under their OR."""
    parts = visible_parts(scope, ordered=False)
    return union_all(*(select(*columns).where(*conditions, part)
                       for part in parts.ranges + parts.strays)).subquery()


def _users(values: tuple[str, ...]) -> ColumnElement[bool]:
    uids = sorted({int(v) for v in values if v.isdigit() and int(v) <= MAX_UID})
    clause = Job.user.in_(values)
    return or_(clause, Job.uid.in_(uids)) if uids else clause


def _nodes(values: tuple[str, ...], dialect: str) -> ColumnElement[bool]:
    """Jobs seen on one of the nodes by its agent (``job_node``, its primary key), or whose
    Slurm node list names one."""
    jn = JobNode.__table__
    seen = exists().where(jn.c.cluster == Job.cluster, jn.c.job_id == Job.job_id,
                          jn.c.node.in_(values))
    if dialect == "postgresql":
        listed = Job.nodes.op("?|")(literal(list(values), type_=postgresql.ARRAY(String)))
        return or_(seen, listed)
    if dialect == "sqlite":
        each = func.json_each(Job.nodes).table_valued("value").alias("slurm_node")
        listed = select(literal(1)).select_from(each).where(each.c.value.in_(values)).exists()
        return or_(seen, listed)
    return seen


def _jobs(selectors: tuple[JobSelector, ...]) -> ColumnElement[bool]:
    """Jobs named by ``-j`` items (their steps are the client's to pick)."""
    plain = sorted({s.job for s in selectors if s.task is None and s.offset is None})
    numbers = [job for job in plain if job.isdigit()]
    tasks = sorted({(s.job, s.task) for s in selectors if s.task is not None})
    offsets = sorted({(s.job, s.offset) for s in selectors if s.offset is not None})
    clauses: list[ColumnElement[bool]] = []
    if plain:
        clauses.append(Job.job_id.in_(plain))
    if numbers:
        # sacct -j N: also every task of array N and every component of het job N.
        clauses += [Job.array_job_id.in_(numbers), Job.het_job_id.in_(numbers)]
    if tasks:
        clauses.append(tuple_(Job.array_job_id, Job.array_task_id).in_(tasks))
    if offsets:
        clauses.append(tuple_(Job.het_job_id, Job.het_job_offset).in_(offsets))
    return or_(*clauses) if clauses else false()


def where(filters: JobFilters, dialect: str) -> list[Any]:
    """Return the WHERE conditions of ``filters`` (SQL for ``dialect``'s JSON)."""
    clauses: list[Any] = []
    for values, column in ((filters.clusters, Job.cluster), (filters.accounts, Job.account),
                           (filters.partitions, Job.partition), (filters.names, Job.name)):
        if values is not None:
            clauses.append(column.in_(values))
    if filters.users is not None:
        clauses.append(_users(filters.users))
    if filters.states is not None:
        clauses.append(func.upper(Job.state).in_(filters.states))
    if filters.nodes is not None:
        clauses.append(_nodes(filters.nodes, dialect))
    if filters.jobs is not None:
        clauses.append(_jobs(filters.jobs))
    # Overlap with [start, end): unknown times (no Slurm event yet) do not exclude a job.
    if filters.start is not None:
        clauses.append(or_(Job.end_at.is_(None), Job.end_at >= filters.start))
    if filters.end is not None:
        # begin_at: the Slurm start, else the first energy seen for the job.
        clauses.append(or_(Job.begin_at.is_(None), Job.begin_at < filters.end))
    if filters.visible is not None:
        clauses.append(visible_clause(filters.visible))
    return clauses


def values(raw: list[str] | None, name: str, *, split: bool = True,
           limit: int = MAX_LIST) -> tuple[str, ...] | None:
    """Return a list filter's values: repeated parameters, each comma-separated when
    ``split`` (job names are not: they may hold commas); in order, without repeats or empty
    ones. None when there are none.

    Raises:
        BadFilter: More than ``limit`` values.
    """
    if raw is None:
        return None
    items = (part.strip() for value in raw for part in (value.split(",") if split else [value]))
    found = tuple(dict.fromkeys(item for item in items if item))
    if len(found) > limit:
        raise BadFilter(f"{name}: {len(found)} values, at most {limit} per request")
    return found or None


def node_values(raw: list[str] | None, name: str = "nodelist") -> tuple[str, ...] | None:
    """Return the nodes of hostlist expressions (``n[1-3],gpu05``), in order, without
    repeats; None when there are none.

    Raises:
        BadFilter: Not a hostlist, or more than :data:`MAX_LIST` nodes.
    """
    if raw is None:
        return None
    nodes: dict[str, None] = {}
    for expression in raw:
        for part in split_list(expression):
            try:
                expanded = hostlist.expand_hostlist(part)
            except hostlist.BadHostlist as err:
                raise BadFilter(f"{name}: {part[:64]!r} is not a node list: {err}") from err
            nodes.update(dict.fromkeys(expanded))
            if len(nodes) > MAX_LIST:
                raise BadFilter(f"{name}: more than {MAX_LIST} nodes per request")
    return tuple(nodes) or None


def state_values(raw: list[str] | None, name: str = "state") -> tuple[str, ...] | None:
    """Return the long names of Slurm state names or codes (``CD,f,TIMEOUT``).

    Raises:
        BadFilter: An unknown state (the message lists the valid ones), or too many.
    """
    found = values(raw, name)
    if found is None:
        return None
    try:
        return parse_states(found)
    except UnknownState as err:
        raise BadFilter(f"{name}: {err}") from err


def job_values(raw: list[str] | None, name: str = "job_id") -> tuple[JobSelector, ...] | None:
    """Return the jobs ``-j`` items name (``1234``, ``1234_5``, ``1234+1``, ``1234.batch``).

    Raises:
        BadFilter: An item is no job id, or more than :data:`MAX_JOB_IDS` of them.
    """
    if raw is None:
        return None
    items = [item for value in raw for item in split_list(value)]
    if len(items) > MAX_JOB_IDS:
        raise BadFilter(f"{name}: {len(items)} values, at most {MAX_JOB_IDS} per request")
    try:
        return parse_job_selectors(items) or None
    except BadJobId as err:
        raise BadFilter(f"{name}: {err}") from err
