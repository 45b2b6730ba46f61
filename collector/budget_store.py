"""Budgets stored and changed by admins, each change audited in its own transaction.

``set_budget`` creates a budget or updates one: the budget ``id`` names, else the recurring
budget with the same (cluster, scope, account, user, period, unit), else the range budget
with the same bounds. ``delete_budget`` removes one. Both write the audit log
(``collector/audit.py``) in the caller's transaction: ``budget.set`` / ``budget.delete``
with the row before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from jobenergy.collector import audit
from jobenergy.collector.models import NAME_LEN, Budget
from jobenergy.core.budgets import BudgetError

_T = Budget.__table__


class UnknownBudget(BudgetError):
    """No budget has this id (the API answers 404)."""


@dataclass(frozen=True)
class BudgetSpec:
    """A checked budget to store; ``account``/``user`` ``""`` where the scope has none."""

    cluster: str
    scope: str
    account: str
    user: str
    period: str
    start_at: datetime | None
    end_at: datetime | None
    unit: str
    limit_uj: int | None
    limit_mg: int | None
    submit_policy: str
    running_policy: str


def _row(conn: Connection, budget_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(_T).where(_T.c.id == budget_id)).first()
    return None if row is None else dict(row._mapping)


def _same(conn: Connection, spec: BudgetSpec) -> dict[str, Any] | None:
    where = [_T.c.cluster == spec.cluster, _T.c.scope == spec.scope,
             _T.c.account == spec.account, _T.c.user == spec.user,
             _T.c.period == spec.period, _T.c.unit == spec.unit]
    if spec.period == "range":
        where += [_T.c.start_at == spec.start_at, _T.c.end_at == spec.end_at]
    row = conn.execute(select(_T).where(*where).order_by(_T.c.id).limit(1)).first()
    return None if row is None else dict(row._mapping)


def _json(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def set_budget(conn: Connection, spec: BudgetSpec, actor: str,
               budget_id: int | None = None) -> tuple[dict[str, Any], bool]:
    """Create or update a budget; return its row and whether it was created.

    Raises:
        UnknownBudget: ``budget_id`` names no budget.
    """
    actor = actor[:NAME_LEN]
    now = datetime.now(UTC)
    before = _row(conn, budget_id) if budget_id is not None else _same(conn, spec)
    if budget_id is not None and before is None:
        raise UnknownBudget(f"no budget {budget_id}")
    values = {**spec.__dict__, "updated_at": now, "updated_by": actor}
    if before is None:
        budget_id = conn.execute(insert(_T).values(**values, created_at=now, created_by=actor)
                                 .returning(_T.c.id)).scalar_one()
    else:
        budget_id = before["id"]
        conn.execute(update(_T).where(_T.c.id == budget_id).values(**values))
    after = _row(conn, budget_id)
    assert after is not None
    audit.record(conn, actor, "budget.set", spec.cluster, _json(before), _json(after))
    return after, before is None


def delete_budget(conn: Connection, budget_id: int, actor: str) -> dict[str, Any]:
    """Delete a budget; return the row it was.

    Raises:
        UnknownBudget: No budget has this id.
    """
    before = _row(conn, budget_id)
    if before is None:
        raise UnknownBudget(f"no budget {budget_id}")
    conn.execute(delete(_T).where(_T.c.id == budget_id))
    audit.record(conn, actor[:NAME_LEN], "budget.delete", before["cluster"], _json(before), None)
    return before
