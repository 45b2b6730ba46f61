"""Readiness of the server on this host: ``GET /healthz`` answers 200 (the database is
reachable and migrated). uvicorn has no sd_notify, so jobenergy-server.service runs this as
``ExecStartPost=``: the unit becomes active once the server answers, not when it forks.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from pathlib import Path

import httpx

from jobenergy.core.errors import ConfigError

POLL_S = 0.5


def local_url(host: str, port: int, tls: bool) -> str:
    """Return the base URL that reaches a server bound to ``host`` from this host."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name
    return f"{'https' if tls else 'http'}://{host}:{port}"


def _verify(cert: Path | None) -> ssl.SSLContext | bool:
    """Check the server's own certificate (the file it serves), not a name: the probe talks
    to a local address, which the certificate need not list. It sends no credentials."""
    if cert is None:
        return True
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    return context


def wait_healthy(config: Path, timeout_s: float) -> str:
    """Poll the configured server's ``/healthz`` until it answers 200.

    Returns:
        The URL that answered.

    Raises:
        ConfigError: The configuration cannot be read, or no 200 came within ``timeout_s``.
    """
    from jobenergy.collector.settings import ServerSettings

    settings = ServerSettings.load(config)
    url = local_url(settings.host, settings.port, settings.tls) + "/healthz"
    try:
        verify = _verify(settings.tls_cert if settings.tls else None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot read tls_cert {settings.tls_cert}: {err}") from err
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(verify=verify, timeout=5.0) as client:
        while True:
            try:
                answer = client.get(url)
                if answer.status_code == 200:
                    return url
                last = f"HTTP {answer.status_code}: {answer.text[:200]}"
            except httpx.HTTPError as err:
                last = str(err) or type(err).__name__
            if time.monotonic() >= deadline:
                raise ConfigError(f"{url} not ready after {timeout_s:g} s: {last}")
            time.sleep(POLL_S)
