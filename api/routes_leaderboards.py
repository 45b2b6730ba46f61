"""``GET /api/v1/leaderboards/models`` and ``GET /api/v1/summary``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from jobenergy.api.leaderboards import LEADERBOARD_METRICS, Window, model_leaderboard, summary
from jobenergy.api.routes_jobs import parse_time
from jobenergy.api.schemas import LeaderboardRow, SummaryRow
from jobenergy.collector.routes import SessionDep

router = APIRouter(prefix="/api/v1", tags=["leaderboards"])

Metric = Literal[LEADERBOARD_METRICS]  # type: ignore[valid-type]
TimeQuery = Annotated[str | None, Query(description="ISO 8601 or epoch s; by job start")]


@router.get("/leaderboards/models", response_model=list[LeaderboardRow],
            summary="Energy per model and phase, sorted by a metric")
def get_model_leaderboard(
    session: SessionDep,
    phase: Literal["training", "inference", "other"] | None = None,
    cluster: str | None = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    metric: Metric = "total_energy_kwh",
    order: Literal["desc", "asc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[LeaderboardRow]:
    """Return one row per (model, phase) of the jobs that started in ``[start, end)``."""
    window = Window(cluster=cluster, phase=phase, start=parse_time(start, "start"),
                    end=parse_time(end, "end"))
    rows = model_leaderboard(session, window, metric, order == "desc", limit)
    return [LeaderboardRow(**row) for row in rows]


@router.get("/summary", response_model=list[SummaryRow], summary="Energy totals per group")
def get_summary(
    session: SessionDep,
    group_by: Literal["user", "account", "partition", "model", "phase", "cluster"] = "user",
    cluster: str | None = None,
    phase: Literal["training", "inference", "other"] | None = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
) -> list[SummaryRow]:
    """Return totals per group of the jobs that started in ``[start, end)``."""
    window = Window(cluster=cluster, phase=phase, start=parse_time(start, "start"),
                    end=parse_time(end, "end"))
    return [SummaryRow(**row) for row in summary(session, window, group_by)]
