"""Build the BMC sensor the agent's settings ask for (``[agent] bmc``, ``bmc_url``, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from jobenergy.agent.sensors.bmc import BmcSensor
from jobenergy.agent.sensors.bmc_ipmi import IpmiDcmiBmc
from jobenergy.agent.sensors.bmc_redfish import RedfishBmc
from jobenergy.core.errors import ConfigError
from jobenergy.core.signing import read_token_file, transport_verify

if TYPE_CHECKING:  # the type only: the daemon never imports pydantic-settings
    from jobenergy.agent.settings import AgentSettings  # (agent/settings_child.py)


def read_credentials(settings: AgentSettings) -> tuple[str | None, str | None]:
    """Return (user, password) from ``bmc_credentials_file`` ("user:password", mode 0600).

    Raises:
        ConfigError: The file is unreadable, readable by others, or not ``user:password``.
    """
    if settings.bmc_credentials_file is None:
        return None, None
    line = read_token_file(settings.bmc_credentials_file)
    user, sep, password = line.partition(":")
    if not sep or not user:
        # The message names the file only: its content may be a password.
        raise ConfigError(
            f"BMC credentials file {settings.bmc_credentials_file}: expected one line "
            "user:password")
    return user, password


def bmc_sensor(settings: AgentSettings) -> BmcSensor | None:
    """Return the configured BMC sensor, or None when ``bmc = "off"``.

    Raises:
        ConfigError: A URL that does not fit the protocol, or unusable credentials.
    """
    if settings.bmc == "off":
        return None
    assert settings.bmc_url is not None  # checked by the settings
    user, password = read_credentials(settings)
    if settings.bmc == "redfish":
        # Basic credentials in clear over http:// only to loopback (an emulator) unless the
        # operator allows it, as for the collector.
        verify = transport_verify(settings.bmc_url, settings.bmc_ca_file,
                                  settings.allow_insecure)
        try:
            return RedfishBmc(settings.bmc_url, user=user, password=password, verify=verify,
                              timeout_s=settings.bmc_timeout_s, chassis=settings.bmc_chassis)
        except ValueError as err:
            raise ConfigError(f"bmc_url: {err}") from err
    try:
        parts = urlsplit(settings.bmc_url)
        port = parts.port or 623
    except ValueError as err:
        raise ConfigError(f"bmc_url {settings.bmc_url!r}: {err}") from err
    if parts.scheme not in ("lanplus", "lan", "open"):
        raise ConfigError(f"bmc_url {settings.bmc_url!r}: use lanplus://host[:port], "
                          "lan://host[:port] or open:// for bmc = \"ipmi\"")
    try:
        return IpmiDcmiBmc(interface=parts.scheme, host=parts.hostname, port=port, user=user,
                           password=password, cipher_suite=settings.bmc_ipmi_cipher_suite,
                           timeout_s=settings.bmc_timeout_s)
    except ValueError as err:
        raise ConfigError(f"bmc_url: {err}") from err
