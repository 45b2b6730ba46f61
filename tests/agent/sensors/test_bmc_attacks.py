"""A hostile or broken BMC, over real HTTP(S): its answers are input. Every bad answer is a
failed read (:class:`BmcError`, counted by the poller), never an exception of another kind, a
hang of the poller thread, a request off the BMC, or credentials anywhere but the header."""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobenergy.agent.bmc_poller import BmcPoller
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.sensors.bmc import BmcError, checked_watts
from jobenergy.agent.sensors.bmc_ipmi import IpmiDcmiBmc
from jobenergy.agent.sensors.bmc_redfish import RedfishBmc
from jobenergy.core.signing import transport_verify

CHASSIS = {"Members": [{"@odata.id": "/redfish/v1/Chassis/1U"}]}


class _Server:
    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        self.status: dict[str, tuple[int, dict[str, str]]] = {}
        self.drip: set[str] = set()
        self.paths: list[str] = []
        self.stop = threading.Event()
        self.url = ""


def _serve(tls: ssl.SSLContext | None = None):
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            state.paths.append(self.path)
            if self.path in state.status:
                code, headers = state.status[self.path]
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.raw.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in state.drip:  # a byte at a time, each inside the socket timeout
                for byte in body:
                    if state.stop.wait(0.05):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            else:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    state.raw["/redfish/v1/Chassis"] = json.dumps(CHASSIS).encode()
    state.raw["/redfish/v1/Chassis/1U"] = json.dumps(
        {"Power": {"@odata.id": "/redfish/v1/Chassis/1U/Power"}}).encode()
    state.raw["/redfish/v1/Chassis/1U/Power"] = json.dumps(
        {"PowerControl": [{"PowerConsumedWatts": 420}]}).encode()
    return server, state


@pytest.fixture
def bmc():
    server, state = _serve()
    yield state
    state.stop.set()
    server.shutdown()
    server.server_close()


def test_a_number_beyond_a_double_is_a_failed_read_counted_by_the_poller(bmc, caplog):
    bmc.raw["/redfish/v1/Chassis/1U/Power"] = (
        b'{"PowerControl": [{"PowerConsumedWatts": 1' + b"0" * 400 + b"}]}")
    with pytest.raises(BmcError, match="not a power"):
        RedfishBmc(bmc.url).read()
    with pytest.raises(BmcError):
        checked_watts(10**400, "x")
    poller = BmcPoller(RedfishBmc(bmc.url), 1.0, AgentMetrics())
    with caplog.at_level(logging.ERROR):
        assert poller.poll_once() is None and poller.poll_once() is None
    assert poller.errors_total == 2
    assert [r.exc_info for r in caplog.records] == [None]  # logged once, no traceback


def test_a_bmc_dripping_its_answer_cannot_hold_the_poller(bmc):
    bmc.drip.add("/redfish/v1/Chassis/1U/Power")
    started = time.monotonic()
    with pytest.raises(BmcError, match="TimeoutError"):
        RedfishBmc(bmc.url, timeout_s=0.3).read()  # each byte in 0.05 s < 0.3 s
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("link", [
    "/redfish/v1/Chassis/1U/\x1b[31mPower", "/redfish/v1/Chassis/1U/Po\twer",
    "/redfish/v1/Chassis/1U/P\u00f6wer", "/redfish/v1/Chassis/1U/Power\x00",
    "/redfish/v1/../../etc", "//evil.example/redfish/v1/", "https://evil.example/redfish/v1/x",
])
def test_links_that_could_escape_the_log_or_the_bmc_are_refused(bmc, link, caplog):
    bmc.raw["/redfish/v1/Chassis/1U"] = json.dumps({"Power": {"@odata.id": link}}).encode()
    with pytest.raises(BmcError, match="@odata.id") as err:
        RedfishBmc(bmc.url).read()
    assert "\x1b" not in str(err.value) and "\t" not in str(err.value)
    assert bmc.paths == ["/redfish/v1/Chassis", "/redfish/v1/Chassis/1U"]


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_credentials_go_nowhere_else(bmc, code):
    other, elsewhere = _serve()
    try:
        bmc.status["/redfish/v1/Chassis/1U/Power"] = (
            code, {"Location": f"{elsewhere.url}/redfish/v1/Chassis/1U/Power"})
        with pytest.raises(BmcError, match=f"HTTP {code}"):
            RedfishBmc(bmc.url, user="root", password="s3cret").read()
        assert elsewhere.paths == []
    finally:
        elsewhere.stop.set()
        other.shutdown()
        other.server_close()


def test_errors_never_carry_the_password(bmc):
    bmc.raw["/redfish/v1/Chassis/1U/Power"] = b"{not json"
    with pytest.raises(BmcError) as err:
        RedfishBmc(bmc.url, user="root", password="s3cret").read()
    assert "s3cret" not in str(err.value) and "cm9vdDpzM2NyZXQ" not in str(err.value)


def test_ipmi_password_is_never_in_argv():
    sensor = IpmiDcmiBmc(host="bmc.example", user="root", password="s3cret")
    assert "s3cret" not in " ".join(sensor.argv) and "-E" in sensor.argv


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    if shutil.which("openssl") is None:
        message = "needs the openssl command (Debian: apt-get install openssl)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                   check=True, capture_output=True)
    return work / "cert.pem", work / "key.pem"


def test_tls_is_verified_against_the_system_store_or_the_sites_ca(self_signed):
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server, state = _serve(tls)
    try:
        # A self-signed BMC the site did not name: refused, credentials never sent.
        with pytest.raises(BmcError, match="CERTIFICATE_VERIFY_FAILED"):
            RedfishBmc(state.url, user="root", password="s3cret",
                       verify=transport_verify(state.url)).read()
        with pytest.raises(BmcError, match="CERTIFICATE_VERIFY_FAILED"):
            RedfishBmc(state.url, verify=False).read()  # no way to turn verification off
        assert state.paths == []
        reading = RedfishBmc(state.url, verify=transport_verify(state.url, Path(cert))).read()
        assert reading.power_w == 420.0
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
