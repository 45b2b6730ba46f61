"""The agent's HTTP client (agent/httpclient.py) against real servers on 127.0.0.1.

Keep-alive and its failure modes (a collector that closes idle connections, one that hangs,
one that talks too much), the exact request the collector sees (target, headers, body, the
signature over them), and TLS verified against a CA file.
"""

from __future__ import annotations

import gzip
import os
import resource
import select
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobenergy.agent.httpclient import MAX_RESPONSE_BYTES, HttpClient, TransportError
from jobenergy.core.signing import BearerSigner, munge_payload


class _Server:
    """A real HTTP/1.1 server; records each request and the connection it came on."""

    def __init__(self, tls: ssl.SSLContext | None = None,
                 idle_timeout_s: float | None = None) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.body = b'{"duplicate": false}'
        self.close_after = False  # answer with "Connection: close"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout_s  # then the connection is closed

            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": body, "peer": self.client_address})
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                if outer.close_after:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_requests_go_out_as_sent_and_share_one_connection(server):
    seen = []

    def sign(method: str, target: str, body: bytes) -> dict[str, str]:
        seen.append((method, target, body))
        return {"Authorization": "MUNGE " + munge_payload(method, target, body).decode()}

    client = HttpClient(f"http://127.0.0.1:{server.port}/prefix/api/v1/batches?x=1",
                        sign=sign, user_agent="jobenergy-agent/test")
    bodies = [gzip.compress(b'{"i": %d}' % i) for i in range(3)]
    for body in bodies:
        resp = client.post(body, {"Content-Type": "application/json",
                                  "Content-Encoding": "gzip"})
        assert resp.is_success and resp.json() == {"duplicate": False}
    client.close()
    assert [r["body"] for r in server.requests] == bodies
    assert {r["path"] for r in server.requests} == {"/prefix/api/v1/batches?x=1"}
    assert len({r["peer"] for r in server.requests}) == 1  # kept alive
    headers = server.requests[0]["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["User-Agent"] == "jobenergy-agent/test"
    # A fresh signature per request, over the target on the request line and the body sent.
    assert seen == [("POST", "/prefix/api/v1/batches?x=1", b) for b in bodies]
    assert headers["Authorization"] == "MUNGE " + munge_payload(
        "POST", server.requests[0]["path"], bodies[0]).decode()


def test_a_connection_on_a_descriptor_above_1023_is_kept(server):
    """The agent keeps cgroup files open (agent/cgroupfs.py KeptFiles), so its socket may be
    above 1023, where ``select`` refuses descriptors: the kept connection is still reused."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {wanted}: raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]
    try:
        client = HttpClient(f"http://127.0.0.1:{server.port}/api/v1/batches")
        for i in range(3):
            assert client.post(b"%d" % i, {"Content-Type": "application/json"}).is_success
        assert client._conn is not None and client._conn.sock.fileno() > 1023
        client.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len({r["peer"] for r in server.requests}) == 1  # one connection, kept alive


def test_a_connection_the_collector_closed_is_replaced(server):
    client = HttpClient(f"http://127.0.0.1:{server.port}/b",
                        sign=BearerSigner("t0k"))
    server.close_after = True
    assert client.post(b"1").is_success
    server.close_after = False
    assert client.post(b"2").is_success and client.post(b"3").is_success
    client.close()
    peers = [r["peer"] for r in server.requests]
    assert peers[0] != peers[1] and peers[1] == peers[2]
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer t0k"}


def test_an_idle_connection_dropped_by_the_collector_is_not_a_failure():
    # As uvicorn does after its keep-alive timeout (5 s): the next push, 10 s later, must not
    # fail on the dead connection.
    server = _Server(idle_timeout_s=0.2)
    try:
        client = HttpClient(f"http://127.0.0.1:{server.port}/b")
        assert client.post(b"1").is_success
        # Wait until the server has closed the idle connection (end-of-file on the kept
        # socket), not a guessed 0.6 s: a server thread stalled that long keeps it open.
        assert client._conn is not None and client._conn.sock is not None
        poller = select.poll()
        poller.register(client._conn.sock, select.POLLIN)
        assert poller.poll(30_000), "the server never dropped the idle connection"
        assert client.post(b"2").is_success
        client.close()
        assert server.requests[0]["peer"] != server.requests[1]["peer"]
    finally:
        server.close()


def test_a_collector_that_never_answers_times_out(tmp_path):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(4)
    try:
        client = HttpClient(f"http://127.0.0.1:{hung.getsockname()[1]}/b", timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            client.post(b"x")
        assert time.monotonic() - t0 < 3
        client.close()
    finally:
        hung.close()


def test_refused_and_unknown_hosts_are_transport_errors():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    client = HttpClient(f"http://127.0.0.1:{port}/b", timeout_s=2)
    with pytest.raises(TransportError, match="Connection ?[Rr]efused|111"):
        client.post(b"x")
    with pytest.raises(ValueError):
        HttpClient("ftp://127.0.0.1/b")


def test_a_huge_answer_is_cut_and_its_connection_dropped(server):
    server.status = 413
    server.body = b"x" * (MAX_RESPONSE_BYTES + 10)
    client = HttpClient(f"http://127.0.0.1:{server.port}/b")
    resp = client.post(b"1")
    assert resp.status_code == 413 and len(resp.content) == MAX_RESPONSE_BYTES
    server.status, server.body = 200, b"{}"
    assert client.post(b"2").is_success
    client.close()
    assert server.requests[0]["peer"] != server.requests[1]["peer"]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=jobenergy-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], capture_output=True, check=True,
                   timeout=60)
    return cert, key


def test_tls_is_verified_against_the_ca_file(tmp_path):
    from jobenergy.core.signing import transport_verify

    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = _Server(tls)
    try:
        url = f"https://127.0.0.1:{server.port}/b"
        verified = HttpClient(url, verify=transport_verify(url, ca_file=cert))
        assert verified.post(b"1").is_success and verified.post(b"2").is_success
        verified.close()
        assert server.requests[0]["peer"] == server.requests[1]["peer"]
        system_store = HttpClient(url, verify=transport_verify(url))  # not signed by it
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            system_store.post(b"3")
        system_store.close()
    finally:
        server.close()
