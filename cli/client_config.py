"""The command-line clients' system file, so login-node users need no environment:

    # /etc/jobenergy/jobenergy.toml (or $JOBENERGY_CONFIG)
    url = "https://jobenergy.example.org:8443"
    cluster = "mycluster"
    ca_file = "/etc/jobenergy/ca.pem"
    # allow_insecure = false
    # munge_socket = "/run/munge/munge.socket.2"

Options and the environment (``JOBENERGY_URL``, ``JOBENERGY_CLUSTER``, ``JOBENERGY_CA_FILE``,
``JOBENERGY_ALLOW_INSECURE``, ``JOBENERGY_MUNGE_SOCKET``) win over the file; a missing file
is no error, a broken one is.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

from jobenergy.core.errors import ConfigError

DEFAULT_PATH = Path("/etc/jobenergy/jobenergy.toml")


class ClientConfig(BaseSettings):
    """The file's keys (unknown keys are ignored: the file may serve other tools too)."""

    model_config = SettingsConfigDict(extra="ignore")

    url: str | None = None
    cluster: str | None = None
    ca_file: Path | None = None
    allow_insecure: bool = False
    munge_socket: str | None = None


def config_path() -> Path:
    """Return the file in force: ``$JOBENERGY_CONFIG``, else the system one."""
    return Path(os.environ.get("JOBENERGY_CONFIG") or DEFAULT_PATH)


@cache
def client_config() -> ClientConfig:
    """Return the file's settings (all None when there is no file).

    Raises:
        ConfigError: The file exists but cannot be read or is not valid TOML.
    """
    path = config_path()
    if not path.exists():
        return ClientConfig.model_construct()
    try:
        path.read_bytes()
        values = TomlConfigSettingsSource(ClientConfig, toml_file=path)()
        return ClientConfig.model_validate(values)
    except (OSError, ValueError, ValidationError) as err:
        raise ConfigError(f"{path}: {err}".splitlines()[0]) from err
