"""The HTTP client every command-line tool (senergy, ``jobenergy cluster``, ``jobenergy slurm``)
talks to the API with: this user's credentials and the site's transport rules.

Credentials (``core/request_auth.user_auth``): ``$JOBENERGY_TOKEN_FILE``, else ``$SLURM_JWT``,
else MUNGE (``$JOBENERGY_MUNGE_SOCKET``), else ``scontrol token``. Transport: ``https://``
verified against ``$JOBENERGY_CA_FILE`` (else the system store); plain ``http://`` only to
loopback unless ``JOBENERGY_ALLOW_INSECURE=1``. Each setting also comes from the system file
(``cli/client_config.py``) when the environment does not give it.
"""

from __future__ import annotations

import os

import httpx
import typer

from jobenergy.cli.client_config import client_config
from jobenergy.core.errors import ConfigError
from jobenergy.core.munge import DEFAULT_SOCKET
from jobenergy.core.request_auth import transport_verify, user_auth


def api_client(url: str, *, timeout_s: float, program: str) -> httpx.Client:
    """Return a client for ``url``; print the problem and exit 2 when it cannot be built."""
    try:
        config = client_config()
        verify = transport_verify(
            url, os.environ.get("JOBENERGY_CA_FILE") or config.ca_file,
            os.environ.get("JOBENERGY_ALLOW_INSECURE") == "1" or config.allow_insecure)
        auth = user_auth(os.environ.get("JOBENERGY_MUNGE_SOCKET") or config.munge_socket
                         or DEFAULT_SOCKET)
    except ConfigError as err:
        typer.echo(f"{program}: {err}", err=True)
        raise typer.Exit(2) from err
    return httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, auth=auth, verify=verify)


def error_detail(resp: httpx.Response, limit_chars: int = 500) -> str:
    """Return the API's reason for an error answer (its JSON ``detail``, else the text)."""
    try:
        detail = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        detail = resp.text
    return str(detail)[:limit_chars]
