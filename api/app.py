"""The server application: collector ingest routes plus the read API."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Connection, Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from jobenergy.api import (
    leaderboards,
    routes_admin,
    routes_budgets,
    routes_jobs,
    routes_leaderboards,
    routes_nodes,
)
from jobenergy.api.access import Roles
from jobenergy.api.auth import Authenticator, resolve_mechanisms
from jobenergy.api.authenticate import Authenticate
from jobenergy.api.live_slots import LiveSlots
from jobenergy.api.ratelimit import RateLimiter
from jobenergy.api.routes_series import router as series_router
from jobenergy.api.web import pages
from jobenergy.collector import (
    budget_writer,
    job_details,
    rollups,
    routes_clusters,
    routes_metrics,
)
from jobenergy.collector import routes as collector_routes
from jobenergy.collector.budget_running import RunningBudgets
from jobenergy.collector.clusters import apply_server_defaults
from jobenergy.collector.db import make_engine, schema_revision_problem, upgrade
from jobenergy.collector.group_commit import GroupWriter
from jobenergy.collector.metrics import CollectorMetrics, operation_of
from jobenergy.collector.partitions import ensure_interval_partitions
from jobenergy.collector.routes import DB_RETRY_AFTER_S
from jobenergy.collector.settings import ServerSettings
from jobenergy.core.errors import ConfigError
from jobenergy.core.version import VERSION

logger = logging.getLogger(__name__)


#: How long a successful database ping answers ``/healthz`` for.
HEALTHZ_PING_S = 1.0


class _Health:
    """When ``/healthz`` last reached the database, and the lock that makes one ping at a
    time (created with the app, used on its event loop)."""

    def __init__(self) -> None:
        self.ok_at = -math.inf
        self.lock = anyio.Lock()


def _ping(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.execute(text("SELECT 1"))


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


class RefuseNul:
    """ASGI middleware: a NUL character in the path or the query answers 400.

    PostgreSQL cannot compare text with NUL; refusing it here keeps every route (path and
    query parameters alike) from reaching the database with one (DESIGN.md decision 12).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer 400 for a NUL in the path or query, else pass the request on."""
        if scope["type"] == "http":
            where = None
            if "\x00" in scope.get("path", ""):
                where = "path"
            elif b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
                where = "query"
            if where is not None:
                body = json.dumps({"detail": f"the request {where} must not contain NUL "
                                   "characters"}).encode()
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


#: Methods a read-only server serves; any other is a write (``ServerSettings.read_only``).
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_DETAIL = "read-only replica: send writes to the primary"


class RefuseWrites:
    """ASGI middleware of a read-only server: every write request answers 503.

    Runs before authentication, so nothing is read from the body or the database. 503 rather
    than 405: the request itself is fine, this server is the wrong one, and an agent or a
    Slurm hook pointed here by mistake keeps its batch or event and retries (a 4xx would make
    an agent set the batch aside as refused).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer 503 for a method other than GET/HEAD/OPTIONS, else pass the request on."""
        if scope["type"] == "http" and scope.get("method", "GET") not in READ_METHODS:
            body = json.dumps({"detail": READ_ONLY_DETAIL}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _database_unavailable(request: Request, err: Exception) -> JSONResponse:
    """503 with Retry-After when the database is down, locked or out of connections."""
    request.app.state.metrics.database_errors.labels(
        operation_of(request.method, request.url.path)).inc()
    logger.warning("database unavailable for %s %s: %s", request.method, request.url.path,
                   getattr(err, "orig", None) or err)
    return JSONResponse(
        status_code=503, content={"detail": "database unavailable, retry later"},
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


def _database_refused(request: Request, err: Exception) -> JSONResponse:
    """422 for a value the database cannot hold (a safety net: the routes validate first)."""
    request.app.state.metrics.database_errors.labels(
        operation_of(request.method, request.url.path)).inc()
    orig = getattr(err, "orig", None) or err
    logger.warning("database refused a value for %s %s: %s", request.method,
                   request.url.path, orig)
    return JSONResponse(status_code=422,
                        content={"detail": f"rejected by the database: {orig}"})


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the app: migrate (when ``settings.migrate``), make the engine, mount the routers.

    Every ``/api/`` request is authenticated first (``settings.auth``; ``api/authenticate.py``)
    and each route checks what the caller may do (``api/access.py``).

    The server's ``pue``/``carbon_intensity_g_per_kwh`` seed the defaults of clusters without
    their own factors while the database holds no energy; stored defaults are never rewritten
    by a start (a difference is logged: ``collector/clusters.py: seed_defaults``). The engine
    lives in ``app.state.engine`` and is disposed when the app shuts down.

    With ``settings.read_only`` (a server on a PostgreSQL streaming replica) nothing is written:
    no migration, no partitions, no default factors (the primary's server stores them); the
    schema revision is checked as with ``migrate`` off, and write requests answer 503
    (:class:`RefuseWrites`).

    Args:
        settings: Server settings (database URL, PUE, carbon intensity, body limit).

    Returns:
        The FastAPI application (OpenAPI at ``/openapi.json``).

    Raises:
        ConfigError: The authentication settings cannot work (``api/auth.py``), or the
            schema is not at the expected revision.
    """
    mechanisms = resolve_mechanisms(settings)
    if settings.migrate and not settings.read_only:
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
    engine = make_engine(settings.db_url, pool_size=settings.db_pool_size,
                         pool_timeout=settings.db_pool_timeout_s)
    # Ingest's own connections (and threads, below): reads never wait in front of a batch.
    # SQLite keeps one engine: it has one writer anyway, and an in-memory database is per
    # engine.
    ingest_engine = engine if engine.dialect.name == "sqlite" else make_engine(
        settings.db_url, pool_size=settings.db_ingest_pool_size,
        pool_timeout=settings.db_pool_timeout_s)
    synced = True
    if settings.read_only:
        logger.info("read-only server: writes are answered 503, nothing is written at start")
    else:
        if engine.dialect.name == "postgresql":
            _ensure_partitions(engine)
        try:
            with engine.begin() as conn:
                apply_server_defaults(conn, settings)
        except sa_exc.OperationalError as err:
            # Database down at start: the first batch stores them (collector/routes.py).
            logger.warning("cannot store the default PUE/carbon intensity yet: %s", err.orig)
            synced = False

    refresher = (None if settings.read_only or not settings.rollup_interval_s
                 else rollups.refresher(engine, settings.rollup_interval_s,
                                        leaderboards.all_time_totals,
                                        leaderboards.window_totals))
    materialiser = (None if settings.read_only or not settings.rollup_interval_s
                    else job_details.materialiser(engine, settings.rollup_interval_s))

    # Budgets: the running jobs' view (answered with each batch) and, where configured, the
    # submit script's state file, recomputed together (collector/budget_writer.py).
    running_budgets = RunningBudgets()
    budget_refresher = (None if settings.read_only
                        else budget_writer.budget_refresher(
                            engine, running_budgets, settings.budget_state_interval_s,
                            settings.budget_state_file, settings.budget_state_cluster))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        background = [w for w in (refresher, materialiser, budget_refresher) if w is not None]
        for worker in background:
            worker.start()
        try:
            yield
        finally:
            for worker in background:
                worker.stop()
            engine.dispose()
            ingest_engine.dispose()

    app = FastAPI(
        title="jobenergy",
        summary="Per-job energy accounting for Slurm clusters (integer µJ inside).",
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,  # served from the vendored Swagger UI (api/web/pages.py)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.defaults_synced = synced
    app.state.running_budgets = running_budgets
    app.state.sessionmaker = sessionmaker(engine, expire_on_commit=False)
    app.state.ingest_engine = ingest_engine
    app.state.ingest_sessionmaker = sessionmaker(ingest_engine, expire_on_commit=False)
    app.state.ingest_threads = anyio.CapacityLimiter(settings.db_ingest_pool_size)

    def server_defaults(conn: Connection) -> None:
        # In the first batch's transaction: the defaults a later start could not seed
        # (history stored) are written with the first energy of an empty database.
        if not app.state.defaults_synced:
            apply_server_defaults(conn, settings)

    # One group at a time per process: the next group gathers while one is written. Two or
    # three at a time were slower (bench/ingest_bench.py, 2 cores: 16 agents, 2 workers,
    # 320-347 batches/s with one, 236-283 with two, 244 with three).
    app.state.group_writer = GroupWriter(
        app.state.ingest_sessionmaker, app.state.ingest_threads, settings.ingest_group_batches,
        writers=1,
        in_transaction=server_defaults)
    app.state.live_slots = LiveSlots(settings.max_live_aggregates, settings.live_aggregate_wait_s)
    app.include_router(collector_routes.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_nodes.router)
    app.include_router(series_router)
    app.include_router(routes_leaderboards.router)
    app.include_router(routes_clusters.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_budgets.router)
    app.state.metrics = CollectorMetrics(app.state.sessionmaker)
    app.state.group_writer.observe_group = app.state.metrics.ingest_group_batches.observe
    app.state.group_writer.count_fallback = app.state.metrics.ingest_group_fallbacks.inc
    app.state.metrics_networks = routes_metrics.metrics_networks(settings.metrics_allow)
    app.include_router(routes_metrics.router)  # GET /metrics, outside /api/: no credentials
    pages.install(app)
    app.state.roles = Roles(settings)
    authenticator = Authenticator(settings, mechanisms, app.state.sessionmaker)
    app.add_middleware(
        Authenticate,
        authenticator=authenticator,
        roles=app.state.roles,
        limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        ingest_threads=app.state.ingest_threads,
        ingest_authenticator=authenticator.with_sessions(app.state.ingest_sessionmaker),
        body_limit=max(settings.max_body_bytes, settings.max_series_bytes),
    )
    if settings.read_only:
        app.add_middleware(RefuseWrites)  # before authentication: no body, no database
    app.add_middleware(RefuseNul)  # runs before authentication
    app.add_middleware(pages.SecurityHeaders)  # outermost: on every answer, refusals too
    for unavailable in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(sa_exc.DataError, _database_refused)

    health = _Health()

    @app.get("/healthz", tags=["health"], summary="Liveness and database reachability")
    async def healthz(request: Request) -> dict[str, str]:
        # Async, with the ping in a thread on its own session: the connection goes back to
        # the pool before the answer is built (SessionsClosed in collector/routes.py says
        # why). A successful ping answers for HEALTHZ_PING_S, one ping at a time: the check
        # needs no credentials, so a flood of it must not become a flood of queries.
        async with health.lock:
            if time.monotonic() - health.ok_at >= HEALTHZ_PING_S:
                await run_in_threadpool(_ping, request.app.state.sessionmaker)
                health.ok_at = time.monotonic()
        return {"status": "ok"}

    return app
