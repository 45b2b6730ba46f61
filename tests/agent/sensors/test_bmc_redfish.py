"""The Redfish sensor over real HTTP against served Redfish documents (DSP8010 shapes)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobenergy.agent.sensors.bmc import BmcError
from jobenergy.agent.sensors.bmc_redfish import RedfishBmc
from jobenergy.core.units import UJ_PER_KWH


class _Bmc:
    """Documents by path; a test changes them between reads. ``raw`` overrides a body."""

    def __init__(self) -> None:
        self.docs: dict[str, object] = {}
        self.raw: dict[str, bytes] = {}
        self.auth: list[str | None] = []
        self.slow = threading.Event()


@pytest.fixture
def bmc():
    state = _Bmc()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            state.auth.append(self.headers.get("Authorization"))
            if self.path.endswith("/Slow"):
                state.slow.wait(5)
            body = state.raw.get(self.path)
            if body is None:
                doc = state.docs.get(self.path)
                if doc is None:
                    self.send_error(404)
                    return
                body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    state.docs["/redfish/v1/Chassis"] = {"Members": [{"@odata.id": "/redfish/v1/Chassis/1U"}]}
    yield state
    state.slow.set()
    server.shutdown()
    server.server_close()


def _legacy(bmc, watts):
    bmc.docs["/redfish/v1/Chassis/1U"] = {"Power": {"@odata.id": "/redfish/v1/Chassis/1U/Power"}}
    bmc.docs["/redfish/v1/Chassis/1U/Power"] = {"PowerControl": [{"PowerConsumedWatts": watts}]}


def test_legacy_power_is_read_with_basic_auth(bmc):
    _legacy(bmc, 512)
    sensor = RedfishBmc(bmc.url, user="root", password="s3cret")
    reading = sensor.read()
    assert reading.power_w == 512 and reading.energy_uj is None
    assert bmc.auth[-1] is not None and bmc.auth[-1].startswith("Basic ")
    bmc.docs["/redfish/v1/Chassis/1U/Power"]["PowerControl"][0]["PowerConsumedWatts"] = 600.5
    assert sensor.read().power_w == 600.5


def test_environment_metrics_energy_counter_is_preferred(bmc):
    bmc.docs["/redfish/v1/Chassis/1U"] = {
        "EnvironmentMetrics": {"@odata.id": "/redfish/v1/Chassis/1U/EnvironmentMetrics"},
        "Power": {"@odata.id": "/redfish/v1/Chassis/1U/Power"},
    }
    bmc.docs["/redfish/v1/Chassis/1U/EnvironmentMetrics"] = {
        "PowerWatts": {"Reading": 700}, "EnergykWh": {"Reading": 1234.5678}}
    reading = RedfishBmc(bmc.url).read()
    assert reading.power_w == 700
    assert reading.energy_uj == 12345678 * UJ_PER_KWH // 10_000  # exact from the decimal text


@pytest.mark.parametrize("bad", [
    b"not json", b"[]", b'{"PowerControl": []}', b'{"PowerControl": [{"PowerConsumedWatts": -1}]}',
    b'{"PowerControl": [{"PowerConsumedWatts": NaN}]}',
    b'{"PowerControl": [{"PowerConsumedWatts": 1e300}]}',
    b'{"PowerControl": [{"PowerConsumedWatts": "12"}]}',
    b'{"PowerControl": [{"PowerConsumedWatts": true}]}',
    b"[" * 100_000,
])
def test_garbled_answers_are_failed_reads(bmc, bad):
    _legacy(bmc, 1)
    bmc.raw["/redfish/v1/Chassis/1U/Power"] = bad
    with pytest.raises(BmcError):
        RedfishBmc(bmc.url).read()


def test_a_slow_bmc_times_out(bmc):
    bmc.docs["/redfish/v1/Chassis/1U"] = {"Power": {"@odata.id": "/redfish/v1/Chassis/1U/Slow"}}
    with pytest.raises(BmcError):
        RedfishBmc(bmc.url, timeout_s=0.2).read()


def test_an_odata_id_leaving_the_service_is_refused(bmc):
    bmc.docs["/redfish/v1/Chassis/1U"] = {"Power": {"@odata.id": "http://evil/x"}}
    with pytest.raises(BmcError):
        RedfishBmc(bmc.url).read()
