"""The server application: collector ingest routes plus the read API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import sessionmaker

from jobenergy.api import routes_jobs, routes_leaderboards, routes_nodes
from jobenergy.collector import routes as collector_routes
from jobenergy.collector import routes_clusters
from jobenergy.collector.clusters import sync_defaults
from jobenergy.collector.db import make_engine, schema_revision_problem, upgrade
from jobenergy.collector.partitions import ensure_interval_partitions
from jobenergy.collector.routes import SessionDep
from jobenergy.collector.settings import ServerSettings
from jobenergy.core.errors import ConfigError

logger = logging.getLogger(__name__)


def _ensure_partitions(engine: Engine) -> None:
    """Create the coming months' ``energy_interval`` partitions; log and carry on on failure.

    A missing partition costs nothing but rows in the DEFAULT partition (moved out later by
    ``jobenergy db maintain``), so a failure here must not keep the server from starting.
    """
    try:
        with engine.begin() as conn:
            created = ensure_interval_partitions(conn)
    except sa_exc.SQLAlchemyError as err:
        logger.warning("cannot create energy_interval partitions: %s", getattr(err, "orig", err))
        return
    if created:
        logger.info("created energy_interval partitions: %s", ", ".join(created))


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the app: migrate (when ``settings.migrate``), make the engine, mount the routers.

    The server's ``pue``/``carbon_intensity_g_per_kwh`` are stored as the defaults of clusters
    without their own factors; when they differ from the stored ones, the facility energy and
    CO2e of those clusters are recomputed here. The engine lives in ``app.state.engine`` and is
    disposed when the app shuts down.

    Args:
        settings: Server settings (database URL, PUE, carbon intensity, body limit).

    Returns:
        The FastAPI application (OpenAPI at ``/openapi.json``).
    """
    if settings.migrate:
        upgrade(settings.db_url)
    else:
        try:
            problem = schema_revision_problem(settings.db_url)
        except sa_exc.OperationalError as err:
            # Database down at start: serve anyway, requests answer 503 until it is back.
            logger.warning("cannot check the schema revision yet: %s", err.orig)
            problem = None
        if problem is not None:
            raise ConfigError(problem)
    engine = make_engine(settings.db_url)
    if engine.dialect.name == "postgresql":
        _ensure_partitions(engine)
    synced = True
    try:
        with engine.begin() as conn:
            sync_defaults(conn, settings.pue, settings.carbon_intensity_g_per_kwh)
    except sa_exc.OperationalError as err:
        # Database down at start: the first batch stores them (collector/routes.py).
        logger.warning("cannot store the default PUE/carbon intensity yet: %s", err.orig)
        synced = False

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="jobenergy",
        summary="Per-job energy accounting for Slurm clusters (integer µJ inside).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.defaults_synced = synced
    app.state.sessionmaker = sessionmaker(engine, expire_on_commit=False)
    app.include_router(collector_routes.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_nodes.router)
    app.include_router(routes_leaderboards.router)
    app.include_router(routes_clusters.router)

    @app.get("/healthz", tags=["health"], summary="Liveness and database reachability")
    def healthz(session: SessionDep) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
