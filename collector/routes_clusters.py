"""Admin API for per-cluster PUE and carbon intensity (``jobenergy cluster ...`` calls these).

- ``GET  /api/v1/clusters`` and ``GET /api/v1/clusters/{cluster}``: configuration and the
  resolved base factors.
- ``PUT  /api/v1/clusters/{cluster}/carbon``: ``{"source": "constant", "g_per_kwh": 55}``,
  ``{"source": "region", "country": "FRA", "year": 2023}``,
  ``{"source": "mix", "shares": {"coal": 25, "petroleum": 35, "natural_gas": 26, "nuclear": 14}}``,
  ``{"source": "series"}`` or ``{"source": "default"}``.
- ``PUT  /api/v1/clusters/{cluster}/pue``: ``{"pue": 1.3}`` (null: the server default).
- ``POST /api/v1/clusters/{cluster}/{carbon|pue}/series``: JSON ``{"points": [{"time", "value"}]}``
  (``Content-Type: application/json``) or CSV (``text/csv``, e.g. an Electricity Maps
  export; ``?column=`` picks the value column); another type or none is 415. The body is
  capped at ``max_series_bytes`` while it arrives and a CSV is parsed row by row up to
  ``max_series_points`` points (413 beyond either). ``DELETE`` the same path drops the series.
- ``GET  /api/v1/clusters/{cluster}/factor-changes?after=N``: the changes that rewrote stored
  facility energy/CO2e after factor revision N (``factors_revision`` in the cluster's answer),
  each with the span of hours it rewrote; ``jobenergy slurm sync`` follows them to rewrite the
  affected jobs' AdminComments (``collector/factor_changes.py``).

Each change recomputes the stored facility energy and CO2e it affects, in one transaction;
invalid input answers 422 (400 for malformed JSON/CSV) and changes nothing. Changes are for
admins and operators only (403 otherwise), and each is written to the audit log in the same
transaction: who, when, the factors before and after (``collector/audit.py``).
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy import select, union

from jobenergy.api.access import Access
from jobenergy.api.authenticate import forbidden, get_access
from jobenergy.collector import audit, clusters, factor_changes
from jobenergy.collector.factors import DEFAULTS
from jobenergy.collector.models import ClusterConfig, Job
from jobenergy.collector.routes import (
    BodyDep,
    JsonDep,
    SessionDep,
    SessionsClosed,
    parse_body,
    read_limited,
)
from jobenergy.collector.settings import ServerSettings
from jobenergy.core.series import SeriesTooLarge, parse_series_csv, step_intervals

router = APIRouter(prefix="/api/v1", tags=["clusters"], route_class=SessionsClosed)

ClusterName = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00/]+$")]


class SeriesExtent(BaseModel):
    """An imported series: how many steps and the time they cover."""

    points: int
    start: datetime | None
    end: datetime | None


class PueOut(BaseModel):
    """PUE outside any series: value and source (``constant`` or ``default``)."""

    value: float
    source: str
    series: SeriesExtent | None


class CarbonOut(BaseModel):
    """Carbon intensity: configured source, base value outside any series, label, params."""

    source: str
    g_per_kwh: float
    base_source: str
    fallback: bool
    label: str
    params: dict[str, Any]
    series: SeriesExtent | None


class ClusterOut(BaseModel):
    """A cluster's factors; ``recomputed_hours`` after a change.

    ``factors_revision`` grows with every change that rewrote stored values (0: none yet).
    """

    cluster: str
    factors_revision: int
    pue: PueOut
    carbon: CarbonOut
    recomputed_hours: int | None = None


class FactorChangeOut(BaseModel):
    """One change that rewrote stored values: the hours ``[start, end)`` of ``jobs`` jobs."""

    revision: int
    start: datetime
    end: datetime
    hours: int
    jobs: int
    changed_at: datetime


class FactorChangesOut(BaseModel):
    """The changes after ``after``, oldest first; ``revision`` is the cluster's latest."""

    cluster: str
    revision: int
    changes: list[FactorChangeOut]


def _out(session: Any, cluster: str, recomputed: int | None = None) -> ClusterOut:
    return ClusterOut(**clusters.describe(session.connection(), cluster),
                      recomputed_hours=recomputed)


def admin_access(access: Annotated[Access, Depends(get_access)]) -> Access:
    """Return the caller's access when it may change factors (admins, operators), else 403."""
    if not access.admin:
        raise forbidden(access, "change PUE or carbon factors (admins and operators do)")
    return access


AdminDep = Annotated[Access, Depends(admin_access)]


def _audited(session: Any, access: Access, cluster: str, action: str, request: Any,
             change: Any) -> ClusterOut:
    """Apply ``change()`` (returns the recomputed hours) and audit it, in one transaction."""
    token = access.caller.token
    if token is not None and token.cluster != cluster:
        raise forbidden(access, f"change the factors of cluster {cluster}")
    conn = session.connection()
    before = ClusterOut(**clusters.describe(conn, cluster)).model_dump(mode="json")
    changed = change()
    after = _out(session, cluster, changed)
    audit.record(conn, access.caller.describe(), action, cluster, before,
                 {**after.model_dump(mode="json"), "request": request})
    return after


def _bad(err: ValueError) -> HTTPException:
    return HTTPException(status_code=422, detail=str(err))


@router.get("/clusters", response_model=list[ClusterOut], summary="Every cluster's factors")
def get_clusters(session: SessionDep) -> list[ClusterOut]:
    """Return the factors of every cluster that has jobs or a configuration."""
    names = session.scalars(
        union(select(Job.cluster), select(ClusterConfig.cluster))
    ).all()
    return [_out(session, name) for name in sorted(set(names) - {DEFAULTS})]


@router.get("/clusters/{cluster}", response_model=ClusterOut, summary="A cluster's factors")
def get_cluster(cluster: ClusterName, session: SessionDep) -> ClusterOut:
    """Return a cluster's PUE and carbon configuration (defaults when none is stored)."""
    return _out(session, cluster)


@router.get("/clusters/{cluster}/factor-changes", response_model=FactorChangesOut,
            summary="Factor changes that rewrote stored values, after a revision")
def get_factor_changes(
    cluster: ClusterName,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> FactorChangesOut:
    """Return the cluster's factor changes with a revision above ``after``, oldest first."""
    conn = session.connection()
    return FactorChangesOut(
        cluster=cluster,
        revision=factor_changes.revision(conn, cluster),
        changes=[FactorChangeOut(**c) for c in factor_changes.changes_after(
            conn, cluster, after, limit)],
    )


@router.put("/clusters/{cluster}/carbon", response_model=ClusterOut, dependencies=[JsonDep],
            summary="Set a cluster's carbon-intensity source and recompute its CO2e")
def put_carbon(cluster: ClusterName, access: AdminDep, body: BodyDep,
               session: SessionDep) -> ClusterOut:
    """Validate, store and apply a carbon-intensity source."""
    setting = parse_body(body, clusters.CarbonSetting)
    try:
        with session.begin():
            return _audited(session, access, cluster, "carbon.set",
                            setting.model_dump(mode="json"),
                            lambda: clusters.set_carbon(session.connection(), cluster, setting))
    except ValueError as err:
        raise _bad(err) from err


@router.put("/clusters/{cluster}/pue", response_model=ClusterOut, dependencies=[JsonDep],
            summary="Set a cluster's constant PUE and recompute its facility energy")
def put_pue(cluster: ClusterName, access: AdminDep, body: BodyDep,
            session: SessionDep) -> ClusterOut:
    """Store a constant PUE (or null: the server default) and apply it."""
    setting = parse_body(body, clusters.PueSetting)
    with session.begin():
        return _audited(session, access, cluster, "pue.set", setting.model_dump(mode="json"),
                        lambda: clusters.set_pue(session.connection(), cluster, setting.pue))


async def read_series_body(request: Request) -> bytes:
    """Read a series import's body, refusing it (413) once over ``max_series_bytes``."""
    settings: ServerSettings = request.app.state.settings
    return await read_limited(request, settings.max_series_bytes)


SeriesBodyDep = Annotated[bytes, Depends(read_series_body)]


#: Media types of a CSV series. Not text/plain: a cross-site ``<form enctype="text/plain">``
#: sends that without a CORS preflight (api/authenticate.py: ``same_origin``).
CSV_TYPES = ("text/csv", "application/csv")


def series_media(request: Request) -> str:
    """Return ``csv`` or ``json`` from the import's Content-Type; 415 for another or none."""
    declared = request.headers.get("content-type")
    media = (declared or "").split(";", 1)[0].strip().lower()
    if media in CSV_TYPES:
        return "csv"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    said = f"unsupported Content-Type {media!r}" if declared is not None else \
        "missing Content-Type"
    raise HTTPException(status_code=415,
                        detail=f"{said}: send text/csv (or application/csv) or application/json")


SeriesMediaDep = Annotated[str, Depends(series_media)]


def _steps(request: Request, body: bytes, media: str, column: str | None) -> list[Any]:
    settings: ServerSettings = request.app.state.settings
    max_points = settings.max_series_points
    try:
        if media == "csv":
            # Decoded and parsed row by row: no second copy of the whole text, no list of rows.
            text = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8-sig", newline="")
            points = parse_series_csv(text, column, max_points)
        else:
            parsed = parse_body(body, clusters.SeriesIn)
            points = [(p.time, p.value) for p in parsed.points]
        return step_intervals(points, max_points)
    except UnicodeDecodeError as err:
        raise HTTPException(status_code=400, detail=f"CSV is not UTF-8: {err}") from err
    except SeriesTooLarge as err:
        raise HTTPException(status_code=413, detail=str(err)) from err
    except ValueError as err:
        raise _bad(err) from err


@router.post("/clusters/{cluster}/{factor}/series", response_model=ClusterOut,
             summary="Import a PUE or carbon-intensity series (JSON or CSV)")
def post_series(
    cluster: ClusterName,
    factor: Literal["carbon", "pue"],
    access: AdminDep,
    request: Request,
    media: SeriesMediaDep,
    body: SeriesBodyDep,
    session: SessionDep,
    column: str | None = None,
) -> ClusterOut:
    """Store a series (each point holds until the next) and recompute the span it covers."""
    steps = _steps(request, body, media, column)
    try:
        with session.begin():
            return _audited(
                session, access, cluster, f"{factor}.series.import",
                {"steps": len(steps), "sha256": hashlib.sha256(body).hexdigest()},
                lambda: clusters.import_series(session.connection(), cluster, factor, steps))
    except ValueError as err:
        raise _bad(err) from err


@router.delete("/clusters/{cluster}/{factor}/series", response_model=ClusterOut,
               summary="Drop a PUE or carbon-intensity series")
def delete_series(
    cluster: ClusterName, factor: Literal["carbon", "pue"], access: AdminDep,
    session: SessionDep,
) -> ClusterOut:
    """Delete the series and recompute the span it covered."""
    with session.begin():
        return _audited(session, access, cluster, f"{factor}.series.delete", None,
                        lambda: clusters.clear_series(session.connection(), cluster, factor))
