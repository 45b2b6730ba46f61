"""The configuration files ``jobenergy setup`` writes, rendered from its flags and checked with
the settings classes that will read them (so a bad flag fails setup, not the service later).

Keys are exactly those of ``agent/settings.py`` (``[agent]``), ``collector/settings.py``
(``[server]`` and ``JOBENERGY_SERVER_DB_URL``), ``cli/client_config.py`` (the login nodes'
``jobenergy.toml``) and ``slurm_plugins/jobenergy-hook.sh`` (``slurm-hooks.env``).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from jobenergy.cli.setup_files import SetupError
from jobenergy.core.errors import ConfigError

_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
#: C0 controls, DEL and C1 controls: a line break ends the line (a new variable, or a second
#: command where the file is sourced), the others hide what the admin reads.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: What a collector URL may hold (written into shell-sourced files and the hooks' sync command):
#: http(s), a host name or an [IPv6] address, a port, a path of unreserved characters and
#: percent escapes; no user info, query, fragment, quotes, spaces or shell characters.
_URL = re.compile(
    r"(?P<scheme>(?i:https?))://(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<path>(?:/(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})*)*)")
#: POSIX portable user names (useradd's default, plus upper case): what systemd's User= and
#: Slurm's SlurmUser take.
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
#: What an installation path may hold (written into systemd units and shell commands).
_PATH = re.compile(r"/[A-Za-z0-9._+@/-]*")


def toml_value(value: Any) -> str:
    """Return ``value`` as a TOML value (strings as basic strings: JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml_lines(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {toml_value(v)}\n" for key, v in values.items() if v is not None)


def env_line(name: str, value: str) -> str:
    """Return ``NAME='value'``: one line that bash (``.``) and systemd's EnvironmentFile= both
    read back as ``value``, whatever ``&``, ``$``, ``#`` or spaces it holds."""
    assert _ENV_NAME.fullmatch(name)
    if "'" in value or _CONTROL.search(value):
        raise SetupError(f"{name}: a value with a quote or a control character (line break, "
                         "tab, ...) cannot be written safely (percent-encode it in a URL: ' "
                         "is %27)")
    return f"{name}='{value}'\n"


def _checked(path_suffix: str, text: str, load: Any) -> Any:
    """Write ``text`` to a temporary file and load it with ``load(path)``; ConfigError becomes
    a SetupError."""
    with tempfile.TemporaryDirectory(prefix="jobenergy-setup-") as tmp:
        path = Path(tmp) / f"check{path_suffix}"
        path.write_text(text)
        try:
            return load(path)
        except ConfigError as err:
            raise SetupError(str(err)) from err


def agent_toml(values: dict[str, Any]) -> str:
    """Render and check ``/etc/jobenergy/agent.toml`` (``[agent]`` of AgentSettings)."""
    from jobenergy.agent.settings import AgentSettings

    text = (
        "# /etc/jobenergy/agent.toml, from `jobenergy setup agent` (README \"Contract\"). Every\n"
        "# key is also JOBENERGY_AGENT_<KEY>; the others, with their defaults, are in\n"
        "# agent.toml.example (jobenergy/deploy/ in the installed package).\n"
        "[agent]\n" + _toml_lines(values)
    )
    _checked(".toml", text, AgentSettings.load)
    return text


def server_toml(values: dict[str, Any], db_url: str) -> str:
    """Render and check ``/etc/jobenergy/server.toml`` (``[server]`` of ServerSettings)."""
    from jobenergy.collector.settings import ServerSettings

    text = (
        "# /etc/jobenergy/server.toml, from `jobenergy setup server` (README \"Contract\",\n"
        "# \"Security model\"). Every key is also JOBENERGY_SERVER_<KEY> and a `jobenergy server\n"
        "# --<key>` flag. The database URL is in server.env (0600), never here. More keys:\n"
        "# server.toml.example (jobenergy/deploy/ in the installed package).\n"
        "[server]\n" + _toml_lines(values) +
        "\n# Root on a host may post batches for the node named after the host (short name).\n"
        "# Hosts running several slurmd, or whose names differ from their Slurm node names:\n"
        "[server.nodes]\n"
        "# \"gpuhost01\" = [\"gpu01a\", \"gpu01b\"]\n"
    )
    _checked(".toml", text, lambda path: ServerSettings.load(path, db_url=db_url))
    return text


def server_env(db_url: str) -> str:
    """Render ``/etc/jobenergy/server.env`` (the database URL: it may hold a password)."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError as err:
        raise SetupError("the server needs jobenergy[server]: pip install "
                         "'jobenergy[server]'") from err
    try:
        make_url(db_url)
    except ArgumentError as err:
        raise SetupError("--db-url is not a database URL (sqlite:////path or "
                         "postgresql+psycopg://user:password@host/db)") from err
    return (
        "# /etc/jobenergy/server.env (root, 0600), from `jobenergy setup server`: read by\n"
        "# systemd for jobenergy-server and jobenergy-db-maintain, and by\n"
        "# `set -a; . /etc/jobenergy/server.env` for `jobenergy auth token`. Never in argv.\n"
        + env_line("JOBENERGY_SERVER_DB_URL", db_url)
    )


def client_toml(values: dict[str, Any]) -> str:
    """Render and check the login nodes' ``/etc/jobenergy/jobenergy.toml`` (ClientConfig)."""
    import tomllib

    from pydantic import ValidationError

    from jobenergy.cli.client_config import ClientConfig

    text = (
        "# /etc/jobenergy/jobenergy.toml, from `jobenergy setup login`: where `senergy` and\n"
        "# `jobenergy` find the collector ($JOBENERGY_CONFIG names another file; options and\n"
        "# JOBENERGY_URL, JOBENERGY_CA_FILE, ... win over it).\n" + _toml_lines(values)
    )
    try:
        ClientConfig.model_validate(tomllib.loads(text))
    except ValidationError as err:
        raise SetupError(f"invalid client settings: {err.errors()[0]['msg']}") from err
    return text


def hooks_env(values: dict[str, str]) -> str:
    """Render ``/etc/jobenergy/slurm-hooks.env`` (sourced by jobenergy-hook.sh)."""
    return (
        "# /etc/jobenergy/slurm-hooks.env, from `jobenergy setup slurm-hooks`: sourced by\n"
        "# /etc/slurm/jobenergy/jobenergy-hook.sh at every run (root-owned, 0644; no secret:\n"
        "# a token stays in its own 0600 file). Every setting, with its default, is described\n"
        "# in slurm-hooks.env.example (jobenergy/deploy/slurm/ in the installed package).\n"
        + "".join(env_line(k, v) for k, v in values.items())
    )


def sync_env(values: dict[str, str]) -> str:
    """Render ``/etc/jobenergy/sync.env`` (jobenergy-slurm-sync.service's environment)."""
    return (
        "# /etc/jobenergy/sync.env, from `jobenergy setup slurm-hooks`: the environment of\n"
        "# jobenergy-slurm-sync.service (the periodic `jobenergy slurm sync` on the controller).\n"
        + "".join(env_line(k, v) for k, v in values.items())
    )


def check_url(url: str, allow_insecure: bool) -> str:
    """Refuse what every client refuses (no http(s) URL, plain HTTP off loopback) and any
    character beyond ``scheme://host[:port][/path]`` in safe characters (:data:`_URL`)."""
    from jobenergy.core.request_auth import is_loopback

    if not url.lower().startswith(("http://", "https://")):
        raise SetupError(f"--url {url!r} is not an http:// or https:// URL")
    match = _URL.fullmatch(url)
    if match is None or (match["port"] and not 0 < int(match["port"]) < 65536):
        raise SetupError(f"--url {url!r}: only http(s)://host[:port][/path], the path in "
                         "letters, digits, . _ ~ - and %XX escapes")
    host = match["host"].strip("[]")
    if match["scheme"].lower() == "http" and not allow_insecure and not is_loopback(host):
        raise SetupError(f"--url {url}: plain HTTP to {host} carries credentials and "
                         "job data in clear; use https:// (with --ca-file) or --allow-insecure")
    return url.rstrip("/")


def check_user(name: str, option: str) -> str:
    """Return ``name`` when it is a portable user name, else refuse it (one line)."""
    if not USER_NAME.fullmatch(name):
        raise SetupError(f"{option} {name!r} is not a user name (letters, digits, _ . -; "
                         "at most 32)")
    return name


def check_path(path: Path, option: str) -> Path:
    """Return ``path`` when it is absolute and of plain characters (no space, quote, shell or
    control character, no ``%`` systemd would expand), else refuse it (one line)."""
    if not _PATH.fullmatch(str(path)):
        raise SetupError(f"{option} {str(path)!r}: give an absolute path of letters, digits "
                         "and . _ + @ - / only")
    return path
