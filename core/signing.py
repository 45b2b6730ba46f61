"""What a signed request carries, computed without any HTTP library (README "Security model").

The one definition of each credential header and of the MUNGE payload (the server checks the
same bytes, ``api/auth.py``), and of the transport rule: plain HTTP only to a loopback address
unless the operator sets ``allow_insecure``. Two clients call these functions: the httpx
``Auth`` classes of the command-line tools (:mod:`jobenergy.core.request_auth`) and the node
agent's own small HTTP client (``agent/httpclient.py``), which must not import httpx.

* ``Authorization: MUNGE <credential>``: the credential's payload is :func:`munge_payload`, so
  it is bound to one request (method, target, SHA-256 of the body as sent); munged refuses a
  replay within the credential's TTL. Agents sign when they push, not when they spool, so a
  batch delivered after a long outage still authenticates.
* ``X-SLURM-USER-NAME`` + ``X-SLURM-USER-TOKEN``: a Slurm HS256 JWT (``scontrol token``), the
  headers slurmrestd takes.
* ``Authorization: Bearer <token>``: a static token from ``jobenergy auth token``.

Standard library only: the node agent imports this.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from jobenergy.core import munge
from jobenergy.core.errors import ConfigError

#: First word of every signed payload: a credential made for something else never matches.
PAYLOAD_TAG = "jobenergy-v1"

#: Signs one request: (method, target as on the request line, body as sent) → headers to add.
Signer = Callable[[str, str, bytes], dict[str, str]]


def munge_payload(method: str, target: str, body: bytes) -> bytes:
    """Return what a MUNGE credential signs for one request.

    Args:
        method: HTTP method.
        target: Path and query as sent on the request line (``/api/v1/jobs?user=a``).
        body: The body bytes as sent (gzip-compressed when the request is).
    """
    digest = hashlib.sha256(body).hexdigest()
    return f"{PAYLOAD_TAG} {method.upper()} {target} {digest}".encode()


def munge_headers(
    method: str, target: str, body: bytes, socket_path: str = munge.DEFAULT_SOCKET
) -> dict[str, str]:
    """Return ``Authorization: MUNGE <credential>`` for one request (a fresh credential).

    Raises:
        MungeError: munged refused or could not be asked.
    """
    credential = munge.encode(munge_payload(method, target, body), socket_path=socket_path)
    return {"Authorization": f"MUNGE {credential}"}


def bearer_headers(token: str) -> dict[str, str]:
    """Return ``Authorization: Bearer <token>``."""
    return {"Authorization": f"Bearer {token}"}


def slurm_jwt_headers(user: str, token: str) -> dict[str, str]:
    """Return the headers slurmrestd takes a Slurm JWT in."""
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}


class MungeSigner:
    """A :data:`Signer`: a fresh MUNGE credential bound to each request."""

    def __init__(self, socket_path: str = munge.DEFAULT_SOCKET) -> None:
        self.socket_path = socket_path

    def __call__(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """Return the request's ``Authorization`` header (:func:`munge_headers`)."""
        return munge_headers(method, target, body, self.socket_path)


class BearerSigner:
    """A :data:`Signer` sending a static token (``jobenergy auth token``)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """Return the ``Authorization`` header (:func:`bearer_headers`)."""
        return bearer_headers(self.token)


def is_loopback(host: str) -> bool:
    """Return True when ``host`` (an address or ``localhost``) is on the loopback interface."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    """Return how to verify ``url``'s server (httpx's ``verify``), after checking the rule.

    Plain HTTP carries node tokens and job data in clear: allowed to loopback only, unless the
    operator sets ``allow_insecure``. For ``https://``, the site's CA file when given, else the
    system store. No TLS context is built for ``http://`` (loading the CA store costs ~3 MB).

    Returns:
        False for ``http://``; for ``https://`` a verifying TLS context.

    Raises:
        ConfigError: Not an http(s) URL with a host, plain HTTP to another host without
            ``allow_insecure``, or an unreadable CA file.
    """
    try:
        parsed = urlsplit(url)
        host = parsed.hostname
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise ConfigError(f"{url}: not a valid URL ({err})") from err
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https") and not host:
        raise ConfigError(f"{url}: the URL has no host")
    if scheme == "http":
        if not is_loopback(host or "") and not allow_insecure:
            raise ConfigError(
                f"{url}: plain HTTP to a host other than loopback; use https:// (with the "
                "site's CA: ca_file, JOBENERGY_CA_FILE) or allow it explicitly "
                "(allow_insecure, JOBENERGY_ALLOW_INSECURE=1)")
        return False
    if scheme != "https":
        raise ConfigError(f"{url}: use an http:// or https:// URL")
    if ca_file is None:
        return ssl.create_default_context()  # the system store (httpx alone would use certifi)
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load CA file {ca_file}: {err}") from err
