"""The agent's HTTP client for its pushes: the standard library's ``http.client``, kept small.

The command-line tools use httpx; the agent does not, to stay lean on every node: importing
httpx costs ~6.5 MB of memory there (its ``__init__`` imports its own command line, which pulls
in click, rich and pygments whenever they are installed, and typer needs them), and each
``httpx.Client`` builds a TLS context eagerly, ~5.5 MB more even for ``http://``. The agent
makes one kind of request (POST a gzip'd batch to one collector URL) and needs only:

* **One keep-alive connection**, reused while the collector keeps it open. A connection the
  collector closed while idle reads as end-of-file and is replaced before it is used (as
  httpcore does); a request that fails on a reused connection before any answer came is sent
  once more on a new one (a batch is idempotent: the collector stores a key once).
* **Timeouts** per socket operation (connect, each send, each read), as httpx's ``timeout``.
* **TLS** with a verifying context (:func:`jobenergy.core.signing.transport_verify`: the
  system store or the site's ``ca_file``; the host name is checked). No proxy support: an
  agent talks to its site's collector directly.
* **Signing** when sent (:data:`jobenergy.core.signing.Signer`): a fresh MUNGE credential per
  attempt, over the exact request target and body bytes.
* **Bounded answers**: a body is read up to ``MAX_RESPONSE_BYTES``; a longer one is cut (the
  collector's answers are a few hundred bytes) and its connection dropped.

Errors: :class:`TransportError` for anything that kept an HTTP answer from arriving
(refused, reset, timed out, TLS, a malformed answer); an answer with any status is a
:class:`Response`. A signer's own errors (``MungeError``) pass through.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from jobenergy.core.signing import Signer

#: Longest answer body read; the rest is dropped with the connection.
MAX_RESPONSE_BYTES = 1 << 20
#: RFC 3986 ``pchar`` and ``/``, and ``%`` (already-escaped octets stay as they are).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
#: Failures of a reused connection that mean the collector closed it meanwhile.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError)


class TransportError(Exception):
    """No HTTP answer came: the connection failed, timed out, or the answer was malformed."""


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer (status and body; the body cut at ``MAX_RESPONSE_BYTES``)."""

    status_code: int
    content: bytes

    @property
    def is_success(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: The body is not JSON.
        """
        return json.loads(self.content)


def _tls_context(verify: bool | ssl.SSLContext) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify=False: encrypted, not verified
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class HttpClient:
    """POSTs to one URL over one kept-alive connection (rules: module docstring).

    Not thread-safe: one thread sends (the agent's pusher).

    Args:
        url: The URL requests go to (``http://`` or ``https://``; a path and query are kept).
        timeout_s: Default timeout of each socket operation, seconds.
        verify: For ``https://``: a TLS context (``transport_verify``), True for the system
            store, False for no verification.
        sign: Adds credential headers to each request; None: unsigned.
        user_agent: The ``User-Agent`` header.

    Raises:
        ValueError: Not an http(s) URL with a host and a valid port.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        verify: bool | ssl.SSLContext = False,
        sign: Signer | None = None,
        user_agent: str = "jobenergy-agent",
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url}: not an http:// or https:// URL with a host")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port  # ValueError on a bad port
        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
        self.target = target
        self.timeout_s = timeout_s
        self._context = _tls_context(verify) if self._https else None
        self._sign = sign
        self._user_agent = user_agent
        self._conn: http.client.HTTPConnection | None = None

    def post(
        self, body: bytes, headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """POST ``body`` (bytes as sent) with ``headers``; return the answer, whatever status.

        Raises:
            TransportError: No answer came.
            MungeError: The signer could not make a credential.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        reused = self._usable_connection()
        try:
            return self._exchange(body, headers, timeout_s)
        except _STALE as err:
            self.close()
            if not reused:
                raise TransportError(f"connection lost: {err!r}") from err
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise TransportError(_describe(err)) from err
        try:  # the collector closed the kept connection as the request went out: once more
            return self._exchange(body, headers, timeout_s)
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise TransportError(_describe(err)) from err

    def _usable_connection(self) -> bool:
        """Drop a kept connection the server closed meanwhile; True when one is kept."""
        conn = self._conn
        if conn is None or conn.sock is None:
            return False
        # poll, not select: select refuses descriptors above 1023, and the agent keeps cgroup
        # files open (agent/cgroupfs.py KeptFiles), so its socket may well be one.
        try:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            readable = bool(poller.poll(0))
        except (OSError, ValueError):
            readable = True
        if readable:  # end-of-file (or stray bytes) on an idle connection: not reusable
            self.close()
            return False
        return True

    def _exchange(
        self, body: bytes, headers: Mapping[str, str] | None, timeout_s: float
    ) -> Response:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=self._context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._conn = conn
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        sent = {"User-Agent": self._user_agent, "Accept": "*/*", **(headers or {})}
        if self._sign is not None:
            sent.update(self._sign("POST", self.target, body))
        conn.request("POST", self.target, body=body, headers=sent)
        resp = conn.getresponse()
        content = resp.read(MAX_RESPONSE_BYTES + 1)
        if len(content) > MAX_RESPONSE_BYTES or not resp.isclosed():
            content = content[:MAX_RESPONSE_BYTES]
            self.close()  # the rest was not read: the connection cannot carry another request
        return Response(resp.status, content)

    def close(self) -> None:
        """Close the kept connection (the next request opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return f"timed out: {err!r}"
    return repr(err)
