"""The node's wall power from a Redfish BMC (DMTF DSP0266, schemas DSP8010).

Where the chassis has one, the ``EnvironmentMetrics`` resource (Redfish 2020.4+) gives
``EnergykWh.Reading``, a counter the BMC integrates itself, and ``PowerWatts.Reading``; the
older ``Power`` resource gives ``PowerControl[].PowerConsumedWatts`` only (deprecated in
2020.4, still what most BMCs serve). The counter is preferred: no energy is lost between two
readings (DESIGN.md decision 3); without it the caller integrates the power (estimated).

The chassis is found once (``/redfish/v1/Chassis`` → its first member, or the configured
one) and found again after a failure, as a BMC's resource paths can change on a firmware
update. Credentials go in an ``Authorization`` header built from a 0600 file, never in a URL,
a command line or a log line. Answers are bounded in size and time.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from jobenergy.agent.sensors.bmc import BmcError, BmcReading, checked_kwh_uj, checked_watts

#: Largest answer read (a Chassis or Power document is a few KiB).
MAX_ANSWER_BYTES = 1 << 20
#: One GET, connection to last byte, takes at most this many times ``timeout_s``: the socket
#: timeout bounds each read only, and a BMC sending a byte at a time would renew it forever.
_WHOLE_GET_TIMEOUTS = 2
#: An ``@odata.id`` is printable ASCII (a non-ASCII one is percent-encoded): nothing that
#: could write escape sequences or other lines into the agent's log.
_ODATA_PATH = re.compile(r"/redfish/v1/[!-~]{0,1012}")


class RedfishBmc:
    """A Redfish BMC at ``base_url`` (``https://bmc-host[:port]``).

    Args:
        base_url: The BMC's scheme, host and port; a path is ignored.
        user: Account name (``None``: no authentication, a test emulator).
        password: Its password.
        verify: TLS context for ``https://`` (``core.signing.transport_verify``).
        timeout_s: Bound on each socket operation.
        chassis: Chassis id (``/redfish/v1/Chassis/<id>``); None for the first member.
    """

    name = "redfish"

    def __init__(
        self, base_url: str, *, user: str | None = None, password: str | None = None,
        verify: bool | ssl.SSLContext = False, timeout_s: float = 2.0,
        chassis: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url}: not an http:// or https:// URL with a host")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._context = verify if isinstance(verify, ssl.SSLContext) else None
        if self._https and self._context is None:
            self._context = ssl.create_default_context()
        self._timeout_s = timeout_s
        self._auth = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"
        self._chassis_id = chassis
        self._paths: tuple[str | None, str | None] | None = None  # (environment, power)

    def read(self) -> BmcReading:
        """Return the chassis' power (and energy counter when it has one).

        Raises:
            BmcError: No answer in time, an HTTP error, or an answer that is not a reading.
        """
        try:
            if self._paths is None:
                self._paths = self._discover()
            return self._read(*self._paths)
        except BmcError:
            self._paths = None  # find the resources again next time
            raise

    def _read(self, environment: str | None, power: str | None) -> BmcReading:
        if environment is not None:
            doc = self._get(environment)
            energy = _reading(doc, "EnergykWh")
            watts = _reading(doc, "PowerWatts")
            if energy is not None or watts is not None:
                return BmcReading(
                    None if watts is None else checked_watts(watts, "PowerWatts.Reading"),
                    None if energy is None else checked_kwh_uj(energy, "EnergykWh.Reading"),
                )
        if power is None:
            raise BmcError("Redfish chassis has neither EnvironmentMetrics nor Power")
        doc = self._get(power)
        controls = doc.get("PowerControl")
        if not isinstance(controls, list) or not controls or not isinstance(controls[0], dict):
            raise BmcError(f"Redfish {power}: no PowerControl entry")
        # PowerControl[0] is the chassis total on every BMC seen; the others are sub-domains.
        return BmcReading(checked_watts(controls[0].get("PowerConsumedWatts"),
                                        "PowerControl[0].PowerConsumedWatts"))

    def _discover(self) -> tuple[str | None, str | None]:
        if self._chassis_id is None:
            members = self._get("/redfish/v1/Chassis").get("Members")
            if not isinstance(members, list) or not members:
                raise BmcError("Redfish /redfish/v1/Chassis lists no chassis")
            chassis_path = _odata_id(members[0], "Chassis.Members[0]")
        else:
            chassis_path = "/redfish/v1/Chassis/" + quote(self._chassis_id, safe="")
        chassis = self._get(chassis_path)
        environment = chassis.get("EnvironmentMetrics")
        power = chassis.get("Power")
        env_path = _odata_id(environment, "EnvironmentMetrics") if environment else None
        power_path = _odata_id(power, "Power") if power else None
        if env_path is None and power_path is None:
            raise BmcError(f"Redfish {chassis_path}: neither EnvironmentMetrics nor Power")
        return env_path, power_path

    def _get(self, path: str) -> dict[str, Any]:
        """GET ``path`` on the BMC and return its JSON object (bounded, timed out)."""
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout_s, context=self._context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        headers = {"Accept": "application/json", "OData-Version": "4.0"}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        limit_s = self._timeout_s * _WHOLE_GET_TIMEOUTS
        expired = threading.Event()

        def cut() -> None:  # the whole GET took too long: end the reads blocked on it
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(limit_s, cut)
        watchdog.daemon = True
        started = time.monotonic()
        try:
            watchdog.start()
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            body = b""
            while len(body) <= MAX_ANSWER_BYTES:
                chunk = answer.read1(MAX_ANSWER_BYTES + 1 - len(body))
                if not chunk or expired.is_set():
                    break
                body += chunk
            if expired.is_set() or time.monotonic() - started > limit_s:
                raise TimeoutError(f"no whole answer in {limit_s:g} s")
        except (OSError, http.client.HTTPException, ValueError) as err:
            why = TimeoutError(f"no whole answer in {limit_s:g} s") if expired.is_set() \
                else err
            raise BmcError(f"Redfish GET {path}: {type(why).__name__}: {why}") from err
        finally:
            watchdog.cancel()
            conn.close()
        if answer.status != 200:
            raise BmcError(f"Redfish GET {path}: HTTP {answer.status}")
        if len(body) > MAX_ANSWER_BYTES:
            raise BmcError(f"Redfish GET {path}: answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as err:
            raise BmcError(f"Redfish GET {path}: not JSON") from err
        if not isinstance(doc, dict):
            raise BmcError(f"Redfish GET {path}: not a JSON object")
        return doc


def _odata_id(link: object, what: str) -> str:
    path = link.get("@odata.id") if isinstance(link, dict) else None
    if not isinstance(path, str) or not path.startswith("/redfish/v1/") or len(path) > 1024:
        raise BmcError(f"Redfish {what}: no usable @odata.id")
    if not _ODATA_PATH.fullmatch(path) or any(c in path for c in "?#") or ".." in path:
        raise BmcError(f"Redfish {what}: unsafe @odata.id")
    return path


def _reading(doc: dict[str, Any], key: str) -> object | None:
    """Return ``doc[key]["Reading"]`` (a Sensor excerpt), or None when absent or null."""
    excerpt = doc.get(key)
    if not isinstance(excerpt, dict):
        return None
    return excerpt.get("Reading")
