"""How command-line clients prove who they are to the jobenergy server, with httpx.

The credentials, the signed payload and the transport rule are defined once, without any HTTP
library, in :mod:`jobenergy.core.signing` (the node agent signs its pushes with the same
functions, ``agent/httpclient.py``); this module adapts them to ``httpx.Auth`` and picks a
user's credentials (:func:`user_auth`). The names of :mod:`.signing` that callers used from
here are re-exported.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Generator

import httpx

from jobenergy.core import munge
from jobenergy.core.signing import (
    PAYLOAD_TAG,
    bearer_headers,
    is_loopback,
    munge_headers,
    munge_payload,
    read_token_file,
    slurm_jwt_headers,
    transport_verify,
)

__all__ = [
    "PAYLOAD_TAG",
    "BearerAuth",
    "MungeAuth",
    "SlurmJwtAuth",
    "is_loopback",
    "munge_payload",
    "read_token_file",
    "slurm_jwt_from_scontrol",
    "transport_verify",
    "user_auth",
    "user_name",
]


class MungeAuth(httpx.Auth):
    """Signs each request with a fresh MUNGE credential bound to it (:func:`munge_headers`)."""

    requires_request_body = True

    def __init__(self, socket_path: str = munge.DEFAULT_SOCKET) -> None:
        self.socket_path = socket_path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``Authorization: MUNGE <credential>``."""
        request.headers.update(munge_headers(
            request.method, request.url.raw_path.decode("ascii"), request.content,
            self.socket_path))
        yield request


class BearerAuth(httpx.Auth):
    """Sends a static token (``jobenergy auth token``)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``Authorization: Bearer <token>``."""
        request.headers.update(bearer_headers(self.token))
        yield request


class SlurmJwtAuth(httpx.Auth):
    """Sends a Slurm JWT the way slurmrestd takes it."""

    def __init__(self, user: str, token: str) -> None:
        self.user = user
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN``."""
        request.headers.update(slurm_jwt_headers(self.user, self.token))
        yield request


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
