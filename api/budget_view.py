"""Budgets as the API shows them: request and response models, and who sees which.

A user sees the budgets that apply to them (Slurm's PrivateData ``usage``, as for
summaries): their own (``user`` and ``account_user`` naming them) and those of accounts they
coordinate or have jobs in; an ``account_user`` budget of another user only as that account's
coordinator. Admins, operators and the Slurm hooks see every budget; with ``usage`` off
(``private_data``), everyone does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import Connection, select

from jobenergy.api.access import Access
from jobenergy.collector.budget_store import BudgetSpec
from jobenergy.collector.budget_usage import BudgetStatus
from jobenergy.collector.models import Job
from jobenergy.core.budget_state import is_token
from jobenergy.core.budgets import UNIT_LABEL, check_range, display, parse_limit

#: How the projection is made, said next to it in every answer.
PROJECTION_BASIS = "at the current rate: used so far / elapsed time × period length"


class BudgetIn(BaseModel):
    """A budget to create or update (``id``: update that one)."""

    model_config = {"extra": "forbid"}

    id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    cluster: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00/]+$")
    scope: Literal["user", "account", "account_user"]
    account: str | None = None
    user: str | None = None
    period: Literal["day", "week", "month", "range"]
    start: datetime | None = None
    end: datetime | None = None
    limit: str = Field(min_length=1, max_length=64, description="e.g. 2.5MWh, 120kgCO2e")
    submit_policy: Literal["warn", "deny"] = "deny"
    running_policy: Literal["none", "warn", "cancel"] = "none"

    @field_validator("account", "user")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        # Slurm names are one printable token: anything else could forge lines or tokens
        # of the state file the submit script reads (core/budget_state.py).
        if value is not None and not is_token(value):
            raise ValueError("must be a Slurm name: 1-64 printable ASCII characters, no "
                             "spaces or control characters, not '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BudgetIn:
        need_user = self.scope in ("user", "account_user")
        need_account = self.scope in ("account", "account_user")
        if need_user != (self.user is not None) or need_account != (self.account is not None):
            wants = {"user": "user only", "account": "account only",
                     "account_user": "both account and user"}[self.scope]
            raise ValueError(f"scope {self.scope} names {wants}")
        if (self.period == "range") != (self.start is not None and self.end is not None) or (
                self.period != "range" and (self.start or self.end)):
            raise ValueError("start and end are given with period range, and only then")
        if self.start is not None and self.end is not None:
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("start and end need a time zone (e.g. 2027-01-01T00:00Z)")
            check_range(self.start, self.end)
        parse_limit(self.limit)
        return self

    def spec(self) -> BudgetSpec:
        """Return the checked budget to store."""
        limit = parse_limit(self.limit)
        start, end = (check_range(self.start, self.end) if self.start and self.end
                      else (None, None))
        return BudgetSpec(
            cluster=self.cluster, scope=self.scope, account=self.account or "",
            user=self.user or "", period=self.period, start_at=start, end_at=end,
            unit=limit.unit, limit_uj=limit.limit_uj, limit_mg=limit.limit_mg,
            submit_policy=self.submit_policy, running_policy=self.running_policy)


class BudgetOut(BaseModel):
    """A budget and its use in the current period (UTC).

    ``used``, ``limit``, ``remaining`` and ``projection`` are in ``unit`` (kWh of facility
    energy, or kg CO2e); ``used_inner``/``limit_inner`` are the exact integers they come
    from (facility µJ, or µg CO2e).
    """

    id: int
    cluster: str
    scope: str
    account: str | None
    user: str | None
    period: str
    period_start: datetime
    period_end: datetime
    resets_at: datetime | None
    active: bool
    unit: str
    limit: float
    used: float
    remaining: float
    percent: float
    over: bool
    limit_inner: int
    used_inner: int
    projection: float | None
    projection_percent: float | None
    projection_basis: str = PROJECTION_BASIS
    submit_policy: str
    running_policy: str
    limit_uj: int | None
    limit_mg: int | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


def budget_out(status: BudgetStatus) -> BudgetOut:
    """Return the API's view of one budget's status."""
    b, unit = status.budget, status.budget["unit"]
    return BudgetOut(
        id=b["id"], cluster=b["cluster"], scope=b["scope"], account=b["account"] or None,
        user=b["user"] or None, period=b["period"], period_start=status.window.start,
        period_end=status.window.end, resets_at=status.window.resets_at,
        active=status.active, unit=UNIT_LABEL[unit], limit=display(unit, status.limit),
        used=display(unit, status.used),
        remaining=display(unit, max(0, status.limit - status.used)),
        percent=100.0 * status.used / status.limit, over=status.over,
        limit_inner=status.limit, used_inner=status.used,
        projection=None if status.projected is None else display(unit, status.projected),
        projection_percent=None if status.projected is None
        else 100.0 * status.projected / status.limit,
        submit_policy=b["submit_policy"], running_policy=b["running_policy"],
        limit_uj=b["limit_uj"], limit_mg=b["limit_mg"], created_at=b["created_at"],
        created_by=b["created_by"], updated_at=b["updated_at"], updated_by=b["updated_by"])


def visible(conn: Connection, access: Access, budgets: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Return the budgets ``access`` may read (module docstring)."""
    scope = access.scope("usage")
    if scope is None:
        return budgets
    me = scope.user
    accounts = set(scope.accounts)
    wanted = sorted({b["account"] for b in budgets if b["scope"] == "account"} - accounts)
    if me is not None and wanted:
        # Accounts the user ran jobs in: Slurm only lets a user charge their own accounts.
        accounts |= set(conn.execute(select(Job.account).distinct().where(
            Job.user == me, Job.account.in_(wanted))).scalars())
    out = []
    for b in budgets:
        mine = me is not None and b["user"] == me
        if b["scope"] == "user" and mine or b["scope"] == "account" and \
                b["account"] in accounts or b["scope"] == "account_user" and (
                    mine or b["account"] in scope.accounts):
            out.append(b)
    return out
