"""``GET /api/v1/leaderboards/models`` and ``GET /api/v1/summary``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from jobenergy.api.access import Access, Visible
from jobenergy.api.authenticate import get_access
from jobenergy.api.job_filters import visible_clause
from jobenergy.api.leaderboards import (
    LEADERBOARD_METRICS,
    LiveSlot,
    Window,
    model_leaderboard,
    summary_answer,
)
from jobenergy.api.routes_jobs import parse_time
from jobenergy.api.schemas import LeaderboardRow, SummaryRow
from jobenergy.collector.models import Job
from jobenergy.collector.rollups import PERIODS
from jobenergy.collector.routes import SessionDep, SessionsClosed

router = APIRouter(prefix="/api/v1", tags=["leaderboards"], route_class=SessionsClosed)

Metric = Literal[LEADERBOARD_METRICS]  # type: ignore[valid-type]
Period = Literal[tuple(PERIODS)]  # type: ignore[valid-type]
TimeQuery = Annotated[str | None, Query(
    description="ISO 8601 (UTC unless zoned), epoch s or sacct's forms (now-2hours, today); "
    "by job start")]
AccessDep = Annotated[Access, Depends(get_access)]
PeriodQuery = Annotated[Period | None, Query(
    description="the jobs that started in the last 24 h, 7 d or 30 d (instead of start and "
                "end); from the materialised window where source allows, which ends at as_of")]
SourceQuery = Annotated[Literal["auto", "live", "rollup"], Query(
    description="rollup: with no start or end, the all-time (or period) figures materialised "
                "in the background (exact, as of as_of), for callers who count every job; "
                "auto: that on large databases; live: read every job now")]
#: The group a summary shows instead of the names the caller may not see (PrivateData).
HIDDEN_GROUP = "(others)"


def live_slot(request: Request, access: Access, window: Window) -> LiveSlot:
    """The caller's slot for a live leaderboard or summary (``api/live_slots.py``): counted
    per person (by uid where known, so MUNGE, a JWT and the web proxy are one person), not
    for nodes and services."""
    caller = access.caller
    user = None
    if access.is_user:
        user = f"uid={caller.uid}" if caller.uid is not None else f"user={caller.user}"
    materialised = window.visible is None  # a caller who counts every job may ask for one
    return lambda: request.app.state.live_slots.hold(user, materialised)


@router.get("/leaderboards/models", response_model=list[LeaderboardRow],
            summary="Energy per model and phase, sorted by a metric")
def get_model_leaderboard(
    request: Request,
    session: SessionDep,
    access: AccessDep,
    phase: Literal["training", "inference", "other"] | None = None,
    cluster: str | None = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    metric: Metric = "total_energy_kwh",
    order: Literal["desc", "asc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    period: PeriodQuery = None,
    source: SourceQuery = "auto",
) -> list[LeaderboardRow]:
    """Return one row per (model, phase) of the jobs that started in ``[start, end)`` (or in
    the last ``period``), among those the caller may count (``private_data = usage``: their
    own and their accounts')."""
    if period is not None and (start is not None or end is not None):
        raise HTTPException(422, f"period={period} or start/end, not both")
    window = Window(cluster=cluster, phase=phase, start=parse_time(start, "start"),
                    end=parse_time(end, "end"), visible=access.scope("usage"), period=period)
    rows = model_leaderboard(session, window, metric, order == "desc", limit, source,
                             live_slot(request, access, window))
    return [LeaderboardRow(**row) for row in rows]


@router.get("/summary", response_model=list[SummaryRow], summary="Energy totals per group")
def get_summary(
    request: Request,
    session: SessionDep,
    access: AccessDep,
    group_by: Literal["user", "account", "partition", "model", "phase", "cluster"] = "user",
    cluster: str | None = None,
    phase: Literal["training", "inference", "other"] | None = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    period: PeriodQuery = None,
    source: SourceQuery = "auto",
) -> list[SummaryRow]:
    """Return totals per group of the jobs that started in ``[start, end)`` (or in the last
    ``period``).

    PrivateData: with ``usage``, a user's summary counts only the jobs they may read; with
    ``users`` (``accounts``), other users' (accounts') names are merged into one group,
    ``(others)``.
    """
    if period is not None and (start is not None or end is not None):
        raise HTTPException(422, f"period={period} or start/end, not both")
    window = Window(cluster=cluster, phase=phase, start=parse_time(start, "start"),
                    end=parse_time(end, "end"), visible=access.scope("usage"), period=period)
    rows, as_of = summary_answer(session, window, group_by, source,
                                 live_slot(request, access, window))
    word = {"user": "users", "account": "accounts"}.get(group_by)
    # Counted over the caller's visible jobs only (usage private), every name is one they may
    # read in those jobs: nothing to hide. Over everyone's, other users' and accounts' names
    # are hidden, except the caller's own accounts.
    if word is not None and window.visible is None:
        own = own_accounts(session, access) if word == "accounts" else frozenset()
        rows = _merge_hidden(rows, lambda name: name in own or access.sees_name(word, name))
    return [SummaryRow(**row, source="live" if as_of is None else "rollup", as_of=as_of)
            for row in rows]


def own_accounts(session: SessionDep, access: Access) -> frozenset[str]:
    """Return the accounts of the caller's own jobs (a user may always see those names)."""
    if access.reads_all or "accounts" not in access.private_data:
        return frozenset()  # every account name is shown: no need to read the jobs
    mine = Visible(access.visible.user, access.visible.uid)
    return frozenset(a for a in session.scalars(
        select(Job.account).where(visible_clause(mine), Job.account.is_not(None)).distinct())
        if a is not None)


def _merge_hidden(rows: list[dict[str, Any]], shown: Callable[[str | None], bool]
                  ) -> list[dict[str, Any]]:
    """Return ``rows`` with those whose group may not be shown summed into one."""
    kept = [row for row in rows if shown(row["group"])]
    hidden = [row for row in rows if not shown(row["group"])]
    if hidden:
        merged: dict[str, Any] = {"group": HIDDEN_GROUP}
        for key in hidden[0]:
            if key != "group":
                merged[key] = sum(row[key] for row in hidden)
        kept.append(merged)
        kept.sort(key=lambda row: -row["energy_kwh"])
    return kept
