"""Collector HTTP routes: ``POST /api/v1/batches`` and ``POST /api/v1/jobs/events``.

Bodies are read by :func:`read_body`, which enforces ``max_body_bytes`` on the bytes received
and again while inflating ``Content-Encoding: gzip``; parsing and validation happen in the
(sync, threadpool) route, and each request is one transaction: on any error nothing is stored.

Both need a caller with the right (``api/access.py``): a batch only from the agent of its node,
an event only from the Slurm hooks (403 otherwise; 401 was answered before, by
``api/authenticate.py``).

Status codes: 200 stored or duplicate, 400 malformed JSON or gzip, 403 not this caller's to
post, 409 a batch key already
stored with other content, 413 body too large, 415 unsupported ``Content-Encoding``, 422
invalid content (message names the field), 503 database unavailable (with ``Retry-After``).
Every 4xx answer to a batch is recorded for its node (``collector/refusals.py``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.api.access import Access
from jobenergy.api.authenticate import access_of, forbidden, get_access
from jobenergy.collector.budget_running import (
    BudgetAction,
    HotBudget,
    batch_actions,
    batch_job_ids,
)
from jobenergy.collector.events import apply_job_event
from jobenergy.collector.group_commit import WriterBusy
from jobenergy.collector.ingest import BatchConflict, IngestRejected, Prepared, prepare
from jobenergy.collector.metrics import CollectorMetrics
from jobenergy.collector.refusals import UNKNOWN_SENDER, record_refusal, sender_of
from jobenergy.collector.settings import ServerSettings
from jobenergy.core.schema import (
    NO_NUL_PATTERN,
    OPTIONAL_FIELDS,
    SCHEMA_VERSION,
    Batch,
    JobEvent,
)
from jobenergy.core.text import printable

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


#: Seconds a client should wait before retrying when the database is unavailable (503).
DB_RETRY_AFTER_S = 10


def db_unavailable() -> HTTPException:
    """Return the 503 answered while the database is down or locked (with Retry-After)."""
    return HTTPException(
        status_code=503, detail="database unavailable, retry later",
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


def get_settings(request: Request) -> ServerSettings:
    """Return the settings ``create_app`` stored on the app."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """Yield a Session from the app's sessionmaker, closed after the request."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


class SessionsClosed(APIRoute):
    """A route whose sync endpoint closes its sessions (``SessionDep``) before it returns.

    FastAPI ends a ``yield`` dependency only after the answer is built, and building a sync
    route's answer waits for a worker thread. A session kept open meanwhile holds its pooled
    connection: a flood of requests (a user within the rate limit can burst 200) then held
    every connection while waiting for threads held by requests waiting for a connection,
    agents' batches included, until the pool timeout answered them all 503. Closed in the
    endpoint's own thread, a request never holds a connection while it waits for a thread.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if inspect.isgeneratorfunction(endpoint) or inspect.isasyncgenfunction(endpoint):
            # Its session would be closed before the stream is read (and quietly reopen).
            raise TypeError(f"{endpoint.__name__}: a streaming endpoint opens its own session")
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _closing_sessions(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _closing_sessions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the wrapped endpoint's signature
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    return run


router = APIRouter(prefix="/api/v1", tags=["collector"], route_class=SessionsClosed)

SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
AccessDep = Annotated[Access, Depends(get_access)]
#: The ingest routes' access: async, so that they take no shared worker thread before
#: their own (``in_ingest_thread``).
IngestAccessDep = Annotated[Access, Depends(access_of)]


def _too_large(limit: int) -> HTTPException:
    return HTTPException(status_code=413, detail=f"request body larger than {limit} bytes")


async def read_body(request: Request) -> bytes:
    """Read the request body, inflating gzip, never holding more than ``max_body_bytes``.

    Raises:
        HTTPException: 413 when the body (compressed or inflated) is too large, 415 for an
            unknown Content-Encoding, 400 for a corrupt gzip stream.
    """
    return await read_limited(request, request.app.state.settings.max_body_bytes)


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the request body as it arrives, inflating gzip, never holding more than ``limit``.

    Raises:
        HTTPException: as :func:`read_body`.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise HTTPException(status_code=415, detail=f"unsupported Content-Encoding {encoding!r}")
    # Bounded inflate: a small gzip bomb must not be expanded beyond the limit.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
        if len(data) > limit or inflater.unconsumed_tail:
            raise _too_large(limit)
        data += inflater.flush()
    except zlib.error as err:
        raise HTTPException(status_code=400, detail=f"corrupt gzip body: {err}") from err
    if len(data) > limit:
        raise _too_large(limit)
    if not inflater.eof:
        raise HTTPException(status_code=400, detail="corrupt gzip body: truncated stream")
    return data


BodyDep = Annotated[bytes, Depends(read_body)]


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def format_validation_error(err: ValidationError) -> str:
    """Render pydantic errors as one readable line: ``field.path: problem; ...``."""
    parts = []
    for item in err.errors(include_url=False)[:10]:
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch" and (
            (item.get("ctx") or {}).get("pattern") == NO_NUL_PATTERN
        ):
            message = "must not contain NUL characters"
        parts.append(f"{_location(item['loc'])}: {message}")
    more = err.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return "; ".join(parts)


async def require_json(request: Request) -> None:
    """Refuse a body declared as something else than JSON (415), e.g. a form post.

    A body without ``Content-Type`` (curl ``--data-binary`` without ``-H``) is parsed as JSON
    only for a caller with a credential of its own (MUNGE, JWT, token): a page on another site
    can send such a body (``fetch`` of a ``Blob``), and the browser adds to it a trusted
    proxy's session (``api/auth.py``), never such a credential.
    """
    declared = request.headers.get("content-type")
    if declared is None:
        access: Access | None = getattr(request.state, "access", None)
        if access is not None and access.caller.mechanism == "proxy":
            raise HTTPException(status_code=415,
                                detail="missing Content-Type: send application/json")
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            status_code=415, detail=f"unsupported Content-Type {media!r}: send application/json"
        )


JsonDep = Depends(require_json)


def parse_body(body: bytes, model: type[ModelT]) -> ModelT:
    """Parse and validate a JSON body.

    Raises:
        HTTPException: 400 for malformed JSON, 422 for a schema violation.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise HTTPException(
                status_code=400, detail=f"malformed JSON: {errors[0]['msg']}"
            ) from err
        if any(e["type"] == "model_type" and not e["loc"] for e in errors):
            raise HTTPException(status_code=422, detail="body must be a JSON object") from err
        for item in errors:
            if item["loc"] == ("schema_version",) and item["type"] != "missing":
                raise HTTPException(
                    status_code=422,
                    detail=(
                        f"unsupported schema_version {item['input']!r}: this collector "
                        f"accepts {SCHEMA_VERSION}"
                    ),
                ) from err
        raise HTTPException(status_code=422, detail=format_validation_error(err)) from err


class IngestResponse(BaseModel):
    """Answer to a batch: ``duplicate`` true when it was already stored (nothing written).

    ``budget_actions``: what the node's agent must do to its running jobs under a budget's
    ``running_policy`` (``collector/budget_running.py``); empty when nothing is due. Agents
    that predate it ignore it, and agents ignore its absence (older collectors).
    """

    duplicate: bool
    records: int
    budget_actions: list[BudgetAction] = []
    #: The optional wire fields this collector stores (``core/schema.py: OPTIONAL_FIELDS``):
    #: an agent sends one only after an answer that names it.
    accepts: list[str] = list(OPTIONAL_FIELDS)


class JobEventResponse(BaseModel):
    """Answer to a job event."""

    cluster: str
    job_id: str
    state: str | None


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _rejected(err: Exception) -> HTTPException:
    return HTTPException(status_code=422, detail=str(err))


class RefusalsRecorded(SessionsClosed):
    """A route whose 4xx answers are recorded per node (``collector/refusals.py``).

    The endpoint puts the sender's ``(cluster, node)`` in ``request.state.sender`` as soon as
    it knows it; refusals before that (body too large, wrong type) count as ``("", "")``.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap the handler: record a 4xx, then let it answer as usual."""
        handler = super().get_route_handler()

        async def recorded(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as err:
                if 400 <= err.status_code < 500:
                    request.app.state.metrics.batches_refused.labels(str(err.status_code)).inc()
                    await _record(request, err.status_code, str(err.detail))
                raise
            except RequestValidationError as err:
                request.app.state.metrics.batches_refused.labels("422").inc()
                await _record(request, 422, str(err.errors()))
                raise

        return recorded


async def _record(request: Request, status: int, reason: str) -> None:
    sender = getattr(request.state, "sender", UNKNOWN_SENDER)
    access: Access | None = getattr(request.state, "access", None)
    # Only a node's own agent writes to its record: otherwise any user could fill the table
    # with invented node names, or blame a real node for their forgeries (those are logged).
    if access is None or not (access.may_post_batch(*sender) if sender != UNKNOWN_SENDER
                              else access.agent_nodes is None or bool(access.agent_nodes)):
        logger.warning("refused batch from %s claiming %s: HTTP %s %s",
                       access.caller.describe() if access else "?", "/".join(sender) or "?",
                       status, printable(reason[:300]))
        return
    if not await in_ingest_thread(request, record_refusal,
                                  request.app.state.ingest_sessionmaker, sender, status, reason):
        request.app.state.metrics.database_errors.labels("refusal").inc()


async def in_ingest_thread(request: Request, work: Callable[..., T], *args: Any) -> T:
    """Run ``work(*args)`` on ingest's own worker threads (``db_ingest_pool_size``), as many
    as its connections: a batch never waits behind reads for a thread or a connection."""
    return await anyio.to_thread.run_sync(functools.partial(work, *args),
                                          limiter=request.app.state.ingest_threads)


async def in_ingest_session(request: Request, work: Callable[..., T], *args: Any) -> T:
    """Run ``work(session, *args)`` on ingest's own threads, with a session on its own
    connections (closed there, before the answer is built)."""
    def run() -> T:
        with request.app.state.ingest_sessionmaker() as session:
            return work(session, *args)

    return await in_ingest_thread(request, run)


async def post_batch(request: Request, access: IngestAccessDep,
                     body: BodyDep) -> IngestResponse:
    """Validate and store a batch in one transaction; a repeated batch is a duplicate.

    A batch whose key is stored with other content answers 409 (nothing stored); one for a
    node the caller is not the agent of, 403. Async: it is parsed on ingest's own threads,
    then stored with the other agents' batches waiting (``collector/group_commit.py``), and
    answered once committed.
    """
    if access.agent_nodes is not None and not access.agent_nodes:
        # Not an agent at all (a user, the hooks): refused before taking an ingest thread.
        raise forbidden(access, "post batches (only the agent of a node does)")
    metrics: CollectorMetrics = request.app.state.metrics
    started = time.perf_counter()  # parsing and validating are part of the cost
    prepared = await in_ingest_thread(request, _prepare_batch, request, access, body)
    batch = prepared.batch
    try:
        result = await request.app.state.group_writer.store(prepared)
    except WriterBusy as err:
        # Not a refusal of the batch: the agent keeps it and sends it again.
        raise HTTPException(status_code=503, detail=str(err),
                            headers={"Retry-After": str(DB_RETRY_AFTER_S)}) from err
    except BatchConflict as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    except IngestRejected as err:
        raise _rejected(err) from err
    except (sa_exc.DataError, sa_exc.IntegrityError) as err:
        # e.g. a total pushed past BIGINT by this batch: the whole batch is rolled back.
        metrics.database_errors.labels("ingest").inc()
        logger.warning("batch rejected by the database node=%s seq=%s: %s",
                       batch.node, batch.seq, err.orig)
        raise HTTPException(
            status_code=422, detail=f"batch rejected by the database: {err.orig}"
        ) from err
    except sa_exc.OperationalError as err:
        # Database down or (SQLite) locked past the busy timeout: the agent keeps the batch
        # in its spool and retries.
        metrics.database_errors.labels("ingest").inc()
        logger.warning("database unavailable node=%s seq=%s: %s", batch.node, batch.seq,
                       err.orig)
        raise db_unavailable() from err
    request.app.state.defaults_synced = True
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    metrics.batches.labels("duplicate" if result.duplicate else "stored").inc()
    metrics.records.inc(result.records)
    if not result.duplicate:
        logger.debug("stored batch node=%s seq=%s records=%s", batch.node, batch.seq,
                     result.records)
    hot = request.app.state.running_budgets.hot(batch.cluster)
    actions = await in_ingest_session(request, _budget_actions, request, batch, hot) if hot else []
    return IngestResponse(duplicate=result.duplicate, records=result.records,
                          budget_actions=actions)


def _prepare_batch(request: Request, access: Access, body: bytes) -> Prepared:
    """Parse, authorise, check and plan a batch (CPU only: no database work)."""
    try:
        batch = parse_body(body, Batch)
    except HTTPException:
        request.state.sender = sender_of(body)
        raise
    request.state.sender = (batch.cluster, batch.node)
    if not access.may_post_batch(batch.cluster, batch.node):
        clusters = sorted({c for c, n in access.agent_nodes or () if c and n == batch.node})
        only = f" (only of cluster {', '.join(clusters)})" if clusters else ""
        raise forbidden(access, f"post batches for node {batch.node} of cluster "
                        f"{batch.cluster}{only}")
    try:
        return prepare(batch)
    except IngestRejected as err:
        raise _rejected(err) from err


def _budget_actions(session: Session, request: Request, batch: Batch,
                    hot: tuple[HotBudget, ...]) -> list[BudgetAction]:
    """Return the budget actions due for the batch's running jobs (after it was committed),
    given the cluster's budgets near their limits (``hot``, not empty).

    A duplicate gets them too: its jobs may still run, and the agent takes each action once.
    A database error here costs the actions of this answer, never the stored batch.
    """
    try:
        with session.begin():
            actions = batch_actions(session.connection(), batch.cluster, batch_job_ids(batch),
                                    hot)
    except sa_exc.SQLAlchemyError as err:
        request.app.state.metrics.database_errors.labels("budget_actions").inc()
        logger.warning("budget actions not computed node=%s seq=%s: %s", batch.node,
                       batch.seq, getattr(err, "orig", None) or err)
        return []
    for action in actions:
        logger.info("budget action=%s job_id=%s budget_id=%s node=%s", action.action,
                    action.job_id, action.budget_id, batch.node)
    return actions


router.add_api_route(
    "/batches",
    post_batch,
    methods=["POST"],
    response_model=IngestResponse,
    openapi_extra=_body_schema(Batch),
    summary="Store one agent batch (idempotent)",
    dependencies=[JsonDep],
    responses={409: {"description": "the batch key is stored with other content"}},
    route_class_override=RefusalsRecorded,
)


@router.post(
    "/jobs/events",
    response_model=JobEventResponse,
    openapi_extra=_body_schema(JobEvent),
    summary="Record a job start or end (Slurm prolog/epilog)",
    dependencies=[JsonDep],
)
async def post_job_event(request: Request, access: IngestAccessDep,
                         body: BodyDep) -> JobEventResponse:
    """Merge a job event into the job's metadata (the Slurm hooks only), on ingest's own
    threads and connections (as a batch)."""
    if not access.service:  # refused before taking an ingest thread
        raise forbidden(access, "post job events (the Slurm hooks do: root or SlurmUser)")
    return await in_ingest_session(request, _store_job_event, access, body)


def _store_job_event(session: Session, access: Access, body: bytes) -> JobEventResponse:
    event = parse_body(body, JobEvent)
    if access.events_cluster is not None and access.events_cluster != event.cluster:
        raise forbidden(access, f"post job events for cluster {event.cluster} (only for "
                        f"{access.events_cluster})")
    try:
        with session.begin():
            job = apply_job_event(session, event)
            response = JobEventResponse(cluster=job.cluster, job_id=job.job_id, state=job.state)
    except IngestRejected as err:
        raise _rejected(err) from err
    except sa_exc.DataError as err:
        raise HTTPException(
            status_code=422, detail=f"event rejected by the database: {err.orig}"
        ) from err
    return response
