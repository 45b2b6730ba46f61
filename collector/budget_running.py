"""Budgets enforced on running jobs: what a node's agent must do to the jobs of a batch.

A budget's ``running_policy`` (``warn`` or ``cancel``; ``none`` is not enforced) applies to
the running jobs that count against it. The collector has the global view (a budget spans
every node and the jobs that already ended), the agents act (only they run ``scancel`` on
their node), so the answer to each accepted batch carries ``budget_actions``: one entry per
job of that batch (the node's own jobs) that is still running and falls under such a budget
at or past :data:`WARN_PPM` of its limit:

* ``warn`` from 90 %: the job's warning signal (``SIGUSR1`` by default), once;
* ``exceeded`` from 100 % under ``warn``: the warning signal once more, the job runs on;
* ``cancel`` from 100 % under ``cancel``: ``scancel --signal=TERM --full``, then ``scancel``.

The agent takes each at most once per job (``agent/energy_limits.py``, as for a job's own
``--energy-limit``), so repeating them in every answer is harmless and survives an agent
restart or a lost answer. Where several budgets apply, the strongest action wins, then the
budget most used (by ppm of its limit), then the lowest id.

Cost: usage is never summed per batch. :class:`RunningBudgets` keeps the budgets at or past
90 % with a running policy, recomputed by the server's budget loop
(``collector/budget_writer.py``, every ``budget_state_interval_s``: one GROUP BY per distinct
period window). A batch of a cluster with none of them costs a dictionary lookup; otherwise
one SELECT of the batch's jobs by primary key (user, account, end), O(jobs in the batch).
So a budget is enforced within ``budget_state_interval_s`` plus the agent's push interval of
being reached.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Connection, select

from jobenergy.collector.budget_usage import BudgetStatus, matches
from jobenergy.collector.models import Job
from jobenergy.core.schema import Batch

#: Share of the limit (millionths) from which running jobs are warned.
WARN_PPM = 900_000
#: Job ids per ``IN (...)`` (SQLite allows 32 766 bound parameters; PostgreSQL 65 535).
_IDS_PER_QUERY = 500
#: Actions by strength: a job gets the strongest one due.
_STRENGTH = {"warn": 0, "exceeded": 1, "cancel": 2}

BudgetActionName = Literal["warn", "exceeded", "cancel"]


class BudgetAction(BaseModel):
    """What the agent of a batch's node must do to one of its running jobs.

    ``used_inner``/``limit_inner`` are the budget's usage and limit as ``GET /api/v1/budgets``
    has them: facility µJ for ``unit`` ``kwh``, µg CO2e for ``kg_co2e``.
    """

    job_id: str
    action: BudgetActionName
    budget_id: int
    used_inner: int
    limit_inner: int
    unit: Literal["kwh", "kg_co2e"]


@dataclass(frozen=True, slots=True)
class HotBudget:
    """A budget with a running policy at or past 90 % of its limit (usage as last computed)."""

    id: int
    scope: str
    account: str
    user: str
    policy: str  # "warn" | "cancel"
    unit: str
    used: int
    limit: int

    @property
    def action(self) -> BudgetActionName:
        """Return what its running jobs get now."""
        if self.used < self.limit:
            return "warn"
        return "cancel" if self.policy == "cancel" else "exceeded"

    @property
    def used_ppm(self) -> int:
        """Return usage in millionths of the limit (integers: exact at any size)."""
        return self.used * 1_000_000 // self.limit


def hot_budgets(statuses: Iterable[BudgetStatus]) -> dict[str, tuple[HotBudget, ...]]:
    """Return, per cluster, the active budgets with a running policy at or past 90 %."""
    out: dict[str, list[HotBudget]] = {}
    for s in statuses:
        b = s.budget
        if not s.active or b["running_policy"] not in ("warn", "cancel") or s.limit <= 0:
            continue
        if s.used * 1_000_000 < s.limit * WARN_PPM:
            continue
        out.setdefault(b["cluster"], []).append(HotBudget(
            id=b["id"], scope=b["scope"], account=b["account"], user=b["user"],
            policy=b["running_policy"], unit=b["unit"], used=s.used, limit=s.limit))
    return {cluster: tuple(budgets) for cluster, budgets in out.items()}


class RunningBudgets:
    """The hot budgets of each cluster, shared by the request threads and the budget loop.

    :meth:`update` keeps the newest computation: one that started before the data held now
    (a slow refresh overtaken by a faster one) is dropped, so the view never goes back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_cluster: dict[str, tuple[HotBudget, ...]] = {}
        self._started = -math.inf

    def update(self, statuses: Iterable[BudgetStatus], started: float) -> bool:
        """Replace the view with ``statuses`` computed from ``started`` (a monotonic time);
        return False when a newer computation is held already."""
        hot = hot_budgets(statuses)
        with self._lock:
            if started < self._started:
                return False
            self._by_cluster, self._started = hot, started
            return True

    def hot(self, cluster: str) -> tuple[HotBudget, ...]:
        """Return the cluster's hot budgets (empty: nothing to enforce)."""
        return self._by_cluster.get(cluster, ())


def batch_job_ids(batch: Batch) -> set[str]:
    """Return the jobs a batch shows on its node: sampled, or with energy shares."""
    ids: set[str] = set()
    for interval in batch.intervals:
        ids.update(sample.job_id for sample in interval.jobs)
        for src in interval.sources:
            ids.update(src.jobs_uj)
    return ids


def batch_actions(conn: Connection, cluster: str, job_ids: Iterable[str],
                  hot: tuple[HotBudget, ...]) -> list[BudgetAction]:
    """Return the actions due for the running jobs among ``job_ids``, by job id.

    A job counts as running until its end is stored (``job.end_at``); its user and account
    come from the Slurm events: a job whose start event has not arrived matches no budget yet.
    """
    if not hot:
        return []
    ids = sorted(set(job_ids))
    out: list[BudgetAction] = []
    for i in range(0, len(ids), _IDS_PER_QUERY):
        rows = conn.execute(
            select(Job.job_id, Job.user, Job.account)
            .where(Job.cluster == cluster, Job.job_id.in_(ids[i:i + _IDS_PER_QUERY]),
                   Job.end_at.is_(None)))
        for job_id, user, account in rows:
            due = [b for b in hot if matches({"scope": b.scope, "user": b.user,
                                              "account": b.account}, user, account)]
            if not due:
                continue
            top = max(due, key=lambda b: (_STRENGTH[b.action], b.used_ppm, -b.id))
            out.append(BudgetAction(job_id=job_id, action=top.action, budget_id=top.id,
                                    used_inner=top.used, limit_inner=top.limit,
                                    unit=top.unit))  # type: ignore[arg-type]
    out.sort(key=lambda a: a.job_id)
    return out
