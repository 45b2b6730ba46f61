"""``GET /api/v1/budgets/state`` on the wire: what the server answers and what ``jobenergy
budget write-state`` reads (typed, so the file's integers stay integers)."""

from __future__ import annotations

from pydantic import BaseModel


class StateBudget(BaseModel):
    """One budget of the state file: ``used``/``limit`` in µJ (``kwh``) or µg (``kg_co2e``)."""

    id: int
    scope: str
    account: str
    user: str
    policy: str
    unit: str
    period: str
    used: int
    limit: int
    resets_at: int | None


class StateOut(BaseModel):
    """The budgets under way at ``generated`` (unix seconds)."""

    generated: int
    budgets: list[StateBudget]
