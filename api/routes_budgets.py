"""Energy budgets (issue 13): ``jobenergy budget``, ``senergy budget`` and the submit script.

- ``GET /api/v1/budgets[?cluster=C]``: the budgets the caller may see (``api/budget_view.py``),
  each with used, limit, remaining, percent, period, ``resets_at`` and the projection.
- ``PUT /api/v1/budgets``: create or update one (admins and operators; audited).
- ``DELETE /api/v1/budgets/{id}``: delete one (admins and operators; audited).
- ``GET /api/v1/budgets/state[?cluster=C]``: what the state file of ``job_submit.lua`` holds
  (``core/budget_state.py``): the budgets under way, for admins and the Slurm hooks (root,
  SlurmUser, a hooks token); ``jobenergy budget write-state`` writes it on the controller.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from jobenergy.api.access import Access
from jobenergy.api.authenticate import forbidden, get_access
from jobenergy.api.budget_view import BudgetIn, BudgetOut, budget_out, visible
from jobenergy.collector import budget_store, budget_usage
from jobenergy.collector.routes import BodyDep, JsonDep, SessionDep, SessionsClosed, parse_body
from jobenergy.core.budget_wire import StateBudget, StateOut

router = APIRouter(prefix="/api/v1", tags=["budgets"], route_class=SessionsClosed)

AccessDep = Annotated[Access, Depends(get_access)]
ClusterQuery = Annotated[str | None, Query(min_length=1, max_length=255,
                                           pattern=r"^[^\x00/]+$")]


class BudgetSetOut(BaseModel):
    """The budget as stored; ``created`` false when an existing one was updated."""

    created: bool
    budget: BudgetOut


def _admin(access: Access, what: str) -> None:
    if not access.admin:
        raise forbidden(access, f"{what} (admins and operators do)")


def _one(session: Any, budget_id: int) -> BudgetOut:
    conn = session.connection()
    rows = budget_usage.load(conn, budget_id=budget_id)
    return budget_out(budget_usage.statuses(conn, rows, datetime.now(UTC))[0])


@router.get("/budgets", response_model=list[BudgetOut], summary="Budgets and their use")
def get_budgets(access: AccessDep, session: SessionDep,
                cluster: ClusterQuery = None) -> list[BudgetOut]:
    """Return the budgets the caller may see, with their use in the current period."""
    conn = session.connection()
    budgets = visible(conn, access, budget_usage.load(conn, cluster))
    return [budget_out(s) for s in budget_usage.statuses(conn, budgets, datetime.now(UTC))]


@router.get("/budgets/state", response_model=StateOut,
            summary="The budgets under way, for the submit script's state file")
def get_budget_state(access: AccessDep, session: SessionDep,
                     cluster: ClusterQuery = None) -> StateOut:
    """Return the budgets whose period is under way (admins and the Slurm hooks)."""
    if not access.reads_all:
        raise forbidden(access, "read the budget state (admins and the Slurm hooks do)")
    now = datetime.now(UTC)
    conn = session.connection()
    return StateOut(generated=int(now.timestamp()), budgets=[
        StateBudget(**e.__dict__) for e in budget_usage.state_entries(conn, now, cluster)])


@router.put("/budgets", response_model=BudgetSetOut, dependencies=[JsonDep],
            summary="Create or update a budget (admins)")
def put_budget(access: AccessDep, body: BodyDep, session: SessionDep) -> BudgetSetOut:
    """Store a budget: the one ``id`` names, else the one with the same key, else a new one."""
    _admin(access, "set budgets")
    setting = parse_body(body, BudgetIn)
    try:
        with session.begin():
            row, created = budget_store.set_budget(
                session.connection(), setting.spec(), access.caller.describe(), setting.id)
    except budget_store.UnknownBudget as err:
        raise HTTPException(status_code=404, detail=str(err)) from err
    except sa_exc.IntegrityError as err:
        raise HTTPException(status_code=409, detail=(
            "another budget has this cluster, scope, account, user, period and unit: "
            "update that one")) from err
    return BudgetSetOut(created=created, budget=_one(session, row["id"]))


@router.delete("/budgets/{budget_id}", response_model=BudgetOut,
               summary="Delete a budget (admins)")
def delete_budget(access: AccessDep, session: SessionDep,
                  budget_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> BudgetOut:
    """Delete a budget; answer it as it was."""
    _admin(access, "delete budgets")
    before = _one_or_404(session, budget_id)
    try:
        with session.begin():
            budget_store.delete_budget(session.connection(), budget_id,
                                       access.caller.describe())
    except budget_store.UnknownBudget as err:
        raise HTTPException(status_code=404, detail=str(err)) from err
    return before


def _one_or_404(session: Any, budget_id: int) -> BudgetOut:
    try:
        out = _one(session, budget_id)
    except IndexError as err:
        raise HTTPException(status_code=404, detail=f"no budget {budget_id}") from err
    session.rollback()  # the read's transaction ends before the write's begins
    return out
