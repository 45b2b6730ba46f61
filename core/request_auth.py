"""How clients prove who they are to the jobenergy server (README "Security model").

Three mechanisms, the identities a Slurm site already has:

* ``Authorization: MUNGE <credential>``: the credential's payload is :func:`munge_payload`, so
  it is bound to one request (method, target, SHA-256 of the body as sent); munged refuses a
  replay within the credential's TTL. Agents sign when they push, not when they spool, so a
  batch delivered after a long outage still authenticates.
* ``X-SLURM-USER-NAME`` + ``X-SLURM-USER-TOKEN``: a Slurm HS256 JWT (``scontrol token``), the
  headers slurmrestd takes.
* ``Authorization: Bearer <token>``: a static token from ``jobenergy auth token``.

This module is the one definition of the signed payload (the server checks the same bytes,
``api/auth.py``) and of the transport rule: plain HTTP only to a loopback address unless the
operator sets ``allow_insecure``.
"""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import os
import ssl
import stat
import subprocess
from collections.abc import Generator
from pathlib import Path

import httpx

from jobenergy.core import munge
from jobenergy.core.errors import ConfigError

#: First word of every signed payload: a credential made for something else never matches.
PAYLOAD_TAG = "jobenergy-v1"


def munge_payload(method: str, target: str, body: bytes) -> bytes:
    """Return what a MUNGE credential signs for one request.

    Args:
        method: HTTP method.
        target: Path and query as sent on the request line (``/api/v1/jobs?user=a``).
        body: The body bytes as sent (gzip-compressed when the request is).
    """
    digest = hashlib.sha256(body).hexdigest()
    return f"{PAYLOAD_TAG} {method.upper()} {target} {digest}".encode()


def is_loopback(host: str) -> bool:
    """Return True when ``host`` (an address or ``localhost``) is on the loopback interface."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MungeAuth(httpx.Auth):
    """Signs each request with a fresh MUNGE credential bound to it."""

    requires_request_body = True

    def __init__(self, socket_path: str = munge.DEFAULT_SOCKET) -> None:
        self.socket_path = socket_path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``Authorization: MUNGE <credential>``."""
        payload = munge_payload(request.method, request.url.raw_path.decode("ascii"),
                                request.content)
        credential = munge.encode(payload, socket_path=self.socket_path)
        request.headers["Authorization"] = f"MUNGE {credential}"
        yield request


class BearerAuth(httpx.Auth):
    """Sends a static token (``jobenergy auth token``)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``Authorization: Bearer <token>``."""
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


class SlurmJwtAuth(httpx.Auth):
    """Sends a Slurm JWT the way slurmrestd takes it."""

    def __init__(self, user: str, token: str) -> None:
        self.user = user
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN``."""
        request.headers["X-SLURM-USER-NAME"] = self.user
        request.headers["X-SLURM-USER-TOKEN"] = self.token
        yield request


def read_token_file(path: str | Path) -> str:
    """Return the token in ``path``, refusing a file others may read (as ssh does its keys).

    Raises:
        ConfigError: Unreadable, empty, or readable by group or others.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path}: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token file {path} is readable by others (mode "
                          f"{stat.S_IMODE(mode):04o}): chmod 600 it")
    if not text:
        raise ConfigError(f"token file {path} is empty")
    return text.splitlines()[0].strip()


def transport_verify(url: str, ca_file: str | Path | None = None,
                     allow_insecure: bool = False) -> bool | ssl.SSLContext:
    """Return httpx's ``verify`` for ``url``, after checking the transport rule.

    Plain HTTP carries node tokens and job data in clear: allowed to loopback only, unless the
    operator sets ``allow_insecure``. For ``https://``, the site's CA file when given, else the
    system store. No TLS context is built for ``http://`` (loading the CA store costs ~3 MB).

    Raises:
        ConfigError: Plain HTTP to another host without ``allow_insecure``, or an unreadable
            CA file.
    """
    parsed = httpx.URL(url)
    if parsed.scheme == "http":
        if not is_loopback(parsed.host) and not allow_insecure:
            raise ConfigError(
                f"{url}: plain HTTP to a host other than loopback; use https:// (with the "
                "site's CA: ca_file, JOBENERGY_CA_FILE) or allow it explicitly "
                "(allow_insecure, JOBENERGY_ALLOW_INSECURE=1)")
        return False
    if parsed.scheme != "https":
        raise ConfigError(f"{url}: use an http:// or https:// URL")
    if ca_file is None:
        return ssl.create_default_context()  # the system store (httpx alone would use certifi)
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load CA file {ca_file}: {err}") from err


def user_name() -> str:
    """Return the name of the user running this process."""
    return getpass.getuser()


def slurm_jwt_from_scontrol(timeout_s: float = 10.0) -> str | None:
    """Return a fresh token from ``scontrol token`` (Slurm with AuthAltTypes=auth/jwt), or
    None when scontrol is missing or refuses."""
    try:
        out = subprocess.run(["scontrol", "token"], capture_output=True, text=True,
                             timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines():
        if line.startswith("SLURM_JWT="):
            return line.split("=", 1)[1].strip() or None
    return None


def user_auth(munge_socket: str = munge.DEFAULT_SOCKET, *,
              token_file: str | None = None, jwt_fallback: bool = True) -> httpx.Auth | None:
    """Return the credentials a command-line client (senergy, sync, cluster) sends.

    In order: a token file (``JOBENERGY_TOKEN_FILE``), ``$SLURM_JWT`` (with this user's
    name), MUNGE when munged answers, else ``scontrol token``. None when nothing is
    available: the server then answers 401 and says what it accepts.

    Raises:
        ConfigError: The token file is unusable.
    """
    token_file = token_file or os.environ.get("JOBENERGY_TOKEN_FILE") or None
    if token_file:
        return BearerAuth(read_token_file(token_file))
    jwt = os.environ.get("SLURM_JWT")
    if jwt:
        return SlurmJwtAuth(user_name(), jwt)
    if munge.available(munge_socket):
        return MungeAuth(munge_socket)
    if jwt_fallback:
        jwt = slurm_jwt_from_scontrol()
        if jwt:
            return SlurmJwtAuth(user_name(), jwt)
    return None
