"""ASGI middleware: authenticate every ``/api/`` request before any route sees it.

It reads the body (up to the server's largest body limit) because a MUNGE credential signs
the body's SHA-256, establishes the :class:`~jobenergy.api.auth.Caller` and its
:class:`~jobenergy.api.access.Access`, applies the per-identity rate limits, and hands the
route the same body. Routes then decide what the caller may do (403) from
``request.state.access`` (:func:`get_access`).

Answers of its own: 401 (no or a bad credential, with ``WWW-Authenticate``), 403 (a write
authenticated by a trusted proxy's user header without same-origin proof, or one a browser
says is cross-site to a server without authentication: :func:`same_origin`),
413 (body over the limit), 429 (rate limit, with ``Retry-After``), 503 (database down while
looking up a token). ``/healthz``, ``/docs``, ``/openapi.json``, the web pages and
``/static`` carry no data and are open.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import HTTPException, Request
from sqlalchemy import exc as sa_exc

from jobenergy.api.access import Access, Roles
from jobenergy.api.auth import Authenticator, AuthError
from jobenergy.api.ratelimit import RateLimiter
from jobenergy.core.text import printable

logger = logging.getLogger(__name__)

#: Failed authentications one client address may make per second (burst: 20) before they
#: are answered 429 and no longer logged one by one (a flood must not flood the log).
FAILURES_PER_S = 2.0
FAILURES_BURST = 20
#: Methods that change nothing (RFC 9110 9.2.1): the only ones a proxy-authenticated caller
#: may send without showing that this server's own pages sent them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The paths of ingest (agents' batches, the hooks' job events): authenticated on ingest's
#: own worker threads (``db_ingest_pool_size``).
INGEST_PATHS = frozenset({"/api/v1/batches", "/api/v1/jobs/events"})


async def _answer(send: Any, status: int, detail: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """Return the request headers by lower-case name; repeated ones joined by ", ".

    RFC 9110 5.3's combination, so that a repeated credential or user header cannot pass as
    its last copy: a joined value is no valid credential, and ``api/auth.py`` names the cause.
    """
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def same_origin(headers: dict[str, str]) -> bool | None:
    """Return whether a browser says that the request comes from this server's own pages.

    ``Sec-Fetch-Site`` (set by the browser, never by a page) decides when present:
    ``same-origin``, or ``none`` (the user's own action). Without it (older browsers), an
    ``Origin`` whose ``host[:port]`` is the request's ``Host`` (scheme aside: a TLS proxy talks
    plain HTTP to us). None: neither header, so no browser said anything (curl, an agent).
    """
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    host = headers.get("host", "").strip().lower()
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host


class Authenticate:
    """The middleware; see the module docstring."""

    def __init__(self, app: Any, authenticator: Authenticator, roles: Roles,
                 limiter: RateLimiter, body_limit: int,
                 ingest_threads: anyio.CapacityLimiter | None = None,
                 ingest_authenticator: Authenticator | None = None) -> None:
        self.app = app
        self.ingest_threads = ingest_threads
        self.ingest_authenticator = ingest_authenticator or authenticator
        self.authenticator = authenticator
        self.roles = roles
        self.limiter = limiter
        self.failures = RateLimiter(FAILURES_PER_S, FAILURES_BURST)
        self.body_limit = body_limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Authenticate ``/api/`` requests, then pass them on with their body."""
        if scope["type"] != "http" or not scope.get("path", "").startswith("/api/"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        headers = _headers(scope)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        # Only a MUNGE credential signs the body: every other request is authenticated before
        # its body is read, so an anonymous client cannot make the server hold 32 MiB.
        body = None
        if self.authenticator.signs_body(headers):
            body = await self._read(headers, receive, send)
            if body is None:
                return
        # Ingest is authenticated on its own worker threads, as it is then stored: a flood of
        # reads holding every shared thread must not hold up agents' batches.
        # A token is then looked up on ingest's own connections too.
        ingest = scope["path"] in INGEST_PATHS
        threads = self.ingest_threads if ingest else None
        authenticator = self.ingest_authenticator if ingest else self.authenticator
        try:
            caller = await anyio.to_thread.run_sync(functools.partial(
                authenticator.authenticate, scope["method"], target.decode("latin-1"),
                headers, body or b"", client), limiter=threads)
        except AuthError as err:
            # A good credential is never blocked (users share login nodes' addresses with
            # each other and the controller's with the hooks); failures beyond the limit get
            # 429 and one log line per limit period instead of a 401 and a line each.
            wait_s = self.failures.take(f"fail:{client}")
            if wait_s:
                await self._too_many(send, wait_s, "too many failed authentications")
                return
            logger.info("401 %s %s from %s: %s", scope["method"], scope["path"], client,
                        printable(str(err)))
            await _answer(send, 401, str(err), [
                (b"www-authenticate", self.authenticator.challenge().encode())])
            return
        except sa_exc.SQLAlchemyError as err:
            logger.warning("cannot look up a token: %s", getattr(err, "orig", err))
            await _answer(send, 503, "database unavailable, retry later", [
                (b"retry-after", b"10")])
            return
        if scope["method"] not in SAFE_METHODS and caller.mechanism in ("proxy", "none"):
            # Ambient authority: the browser sends the proxy's SSO session with any request,
            # even one a page on another site makes, and --auth none asks for nothing. A
            # proxied write must show that this server's own pages sent it; without
            # authentication (a loopback demo, whose agents send no Origin), a browser saying
            # it is cross-site is refused.
            proof = same_origin(headers)
            if proof is False or (proof is None and caller.mechanism == "proxy"):
                await self._cross_site(send, scope, client, caller.describe())
                return
        # A user's rights may take sacctmgr and group lookups: on the shared threads, so that
        # users posting here cannot hold ingest's few threads. Root (agents, hooks), tokens
        # and --auth none need no such lookup; the hooks as SlurmUser take the shared ones.
        quick = caller.token is not None or caller.uid == 0 or caller.mechanism == "none"
        access = await anyio.to_thread.run_sync(self.roles.access, caller,
                                                limiter=threads if quick else None)
        if access.is_user:
            who = caller.user or f"uid={caller.uid}"
            wait_s = self.limiter.take(f"user:{who}")
            if wait_s:
                await self._too_many(send, wait_s, f"rate limit of {self.limiter.per_s:g} "
                                     f"requests/s for {who} exceeded")
                return
        if body is None:
            body = await self._read(headers, receive, send)
            if body is None:
                return
        scope.setdefault("state", {})["access"] = access
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, headers: dict[str, str], receive: Any, send: Any) -> bytes | None:
        """Return the body, or answer 413 and return None when it is over the limit."""
        declared = headers.get("content-length", "")
        body = None
        if not (declared.isdigit() and int(declared) > self.body_limit):
            body = await self._body(receive)
        if body is None:
            await _answer(send, 413, f"request body larger than {self.body_limit} bytes")
        return body

    async def _body(self, receive: Any) -> bytes | None:
        """Return the whole body, or None once it grows past the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.body_limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _cross_site(self, send: Any, scope: dict[str, Any], client: str,
                          who: str) -> None:
        logger.warning("403 %s %s from %s: %s without same-origin proof", scope["method"],
                       scope["path"], client, who)
        via = (f"authenticated by the proxy's {self.authenticator.proxy_header_name}"
               if self.authenticator.enabled else "to a server without authentication")
        await _answer(send, 403, (
            f"{who}: a {scope['method']} {via} must come from this server's pages "
            "(Sec-Fetch-Site: same-origin, or an Origin matching the Host); refused as a "
            "possible cross-site request"))

    @staticmethod
    async def _too_many(send: Any, wait_s: float, detail: str) -> None:
        await _answer(send, 429, f"{detail}; retry in {wait_s:.1f} s", [
            (b"retry-after", str(max(1, math.ceil(wait_s))).encode())])


def get_access(request: Request) -> Access:
    """Return the caller's rights (set by :class:`Authenticate`); 401 when there are none."""
    access = getattr(request.state, "access", None)
    if access is None:
        raise HTTPException(status_code=401, detail="authentication required")
    return access


async def access_of(request: Request) -> Access:
    """:func:`get_access` as an async dependency: it runs on the event loop, so the ingest
    routes never wait for a shared worker thread for it."""
    return get_access(request)


def forbidden(access: Access, what: str) -> HTTPException:
    """Return the 403 for ``what`` the caller may not do, naming the caller."""
    return HTTPException(status_code=403,
                         detail=f"{access.caller.describe()} may not {what}")
