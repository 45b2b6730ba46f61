"""What each budget has used in its current period, from the stored per-job hourly figures.

Usage is the facility energy (PUE-adjusted, ``facility_uj``) or the CO2e (``co2e_ug``) of the
matching jobs' hours in ``job_energy_hour`` within the period (``core/budgets.py``), so it is
the same figure, priced with the same factors, as each job's own (``collector/hours.py``); a
factor change re-prices the hours and the budgets with them. A job matches by its ``user`` and
``account`` in ``job`` (from Slurm's events): energy of a job whose metadata has not arrived
yet counts once it has.

Cost: one GROUP BY (user, account) per distinct (cluster, period window), over that window's
job hours (index ``(cluster, hour_at)``, then the job row by primary key), however many
budgets share the window; a month of a large cluster is one range scan of its job hours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from jobenergy.collector.models import Budget, Job, JobEnergyHour
from jobenergy.core.budget_state import StateEntry
from jobenergy.core.budgets import Window, current_window, limit_inner, projected

#: (user, account) of jobs → (facility µJ, CO2e µg) used in one window.
Usage = dict[tuple[str | None, str | None], tuple[int, int]]


@dataclass(frozen=True)
class BudgetStatus:
    """A budget and where it stands now.

    Attributes:
        budget: The ``budget`` row's columns.
        window: The period counted now.
        used: Usage so far in the inner unit (facility µJ for ``kwh``, µg for ``kg_co2e``).
        limit: The limit in the same unit.
        projected: Usage at the period's end at the rate so far (None before it starts).
        active: The period has started and not ended (a range outside its bounds is not).
    """

    budget: dict[str, Any]
    window: Window
    used: int
    limit: int
    projected: int | None
    active: bool

    @property
    def over(self) -> bool:
        """Return True once usage reached the limit."""
        return self.used >= self.limit


def load(conn: Connection, cluster: str | None = None, budget_id: int | None = None
         ) -> list[dict[str, Any]]:
    """Return every budget (of one cluster; the one with ``budget_id``), by id."""
    stmt = select(Budget.__table__).order_by(Budget.id)
    if cluster is not None:
        stmt = stmt.where(Budget.cluster == cluster)
    if budget_id is not None:
        stmt = stmt.where(Budget.id == budget_id)
    return [dict(row._mapping) for row in conn.execute(stmt)]


def window_usage(conn: Connection, cluster: str, window: Window) -> Usage:
    """Return the facility µJ and CO2e µg of each (user, account) of ``cluster``'s jobs in
    ``window`` (UTC hours ``start <= hour_at < end``)."""
    h = JobEnergyHour
    stmt = (
        select(Job.user, Job.account, func.sum(h.facility_uj), func.sum(h.co2e_ug))
        .select_from(h)
        .join(Job, and_(Job.cluster == h.cluster, Job.job_id == h.job_id))
        .where(h.cluster == cluster, h.hour_at >= window.start, h.hour_at < window.end,
               # Hours after an ended job's end are another job's: Slurm reuses ids (MaxJobId
               # wraps, a controller restarted from scratch), and the old row keeps its user,
               # so the new job's energy must not spend the old owner's budget (and get that
               # user's running jobs cancelled).
               or_(Job.end_at.is_(None), h.hour_at <= Job.end_at))
        .group_by(Job.user, Job.account)
    )
    return {(user, account): (int(facility or 0), int(co2e or 0))
            for user, account, facility, co2e in conn.execute(stmt)}


def matches(budget: dict[str, Any], user: str | None, account: str | None) -> bool:
    """Return True when a job of ``user`` in ``account`` counts against ``budget``.

    Accounts compare without regard to case, as Slurm's association lookup does (a job
    submitted with ``-A PHYSICS`` runs in, and is charged to, account ``physics``); user
    names are case-sensitive, as Unix's are.
    """
    if budget["scope"] in ("user", "account_user") and user != budget["user"]:
        return False
    return budget["scope"] == "user" or (
        account is not None and account.lower() == str(budget["account"]).lower())


class _WindowTotals:
    """One window's usage summed by user, by account (lower case: ``matches``) and by pair,
    so each budget's figure is one lookup: 300 budgets over 10,000 (user, account) pairs
    cost 10,000 additions, not 3 million ``matches`` calls."""

    def __init__(self, usage: Usage) -> None:
        self.by_user: dict[str | None, list[int]] = {}
        self.by_account: dict[str, list[int]] = {}
        self.by_pair: dict[tuple[str | None, str], list[int]] = {}
        for (user, account), values in usage.items():
            targets = [self.by_user.setdefault(user, [0, 0])]
            if account is not None:
                acct = account.lower()
                targets.append(self.by_account.setdefault(acct, [0, 0]))
                targets.append(self.by_pair.setdefault((user, acct), [0, 0]))
            for total in targets:
                total[0] += values[0]
                total[1] += values[1]

    def used(self, budget: dict[str, Any], column: int) -> int:
        """Return what the jobs ``matches`` counts for ``budget`` used (column 0: facility µJ,
        1: CO2e µg)."""
        scope, account = budget["scope"], str(budget["account"]).lower()
        if scope == "user":
            total = self.by_user.get(budget["user"])
        elif scope == "account":
            total = self.by_account.get(account)
        else:
            total = self.by_pair.get((budget["user"], account))
        return total[column] if total else 0


def statuses(conn: Connection, budgets: Iterable[dict[str, Any]], now: datetime
             ) -> list[BudgetStatus]:
    """Return each budget's status at ``now``, one usage query per distinct window."""
    windows: dict[tuple[str, datetime, datetime], _WindowTotals] = {}
    out = []
    for budget in budgets:
        window = current_window(budget["period"], now, budget["start_at"], budget["end_at"])
        key = (budget["cluster"], window.start, window.end)
        if key not in windows:
            windows[key] = _WindowTotals(window_usage(conn, budget["cluster"], window))
        used = windows[key].used(budget, 0 if budget["unit"] == "kwh" else 1)
        out.append(BudgetStatus(
            budget=budget, window=window, used=used,
            limit=limit_inner(budget["unit"], budget["limit_uj"], budget["limit_mg"]),
            projected=projected(used, window, now),
            active=window.start <= now < window.end))
    return out


def state_entry(status: BudgetStatus) -> StateEntry:
    """Return one budget as the state file holds it (``resets_at``: the window's end)."""
    b = status.budget
    return StateEntry(
        id=b["id"], scope=b["scope"], account=b["account"], user=b["user"],
        policy=b["submit_policy"], unit=b["unit"], period=b["period"], used=status.used,
        limit=status.limit, resets_at=int(status.window.end.timestamp()))


def state_entries(conn: Connection, now: datetime, cluster: str | None = None
                  ) -> list[StateEntry]:
    """Return the budgets whose period is under way at ``now``, as the state file holds them."""
    return [state_entry(s) for s in statuses(conn, load(conn, cluster), now) if s.active]
