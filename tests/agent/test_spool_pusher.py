import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobenergy.agent.pusher import Pusher
from jobenergy.agent.spool import Spool


class _Collector:
    """A real HTTP server on 127.0.0.1 answering with programmed status codes."""

    def __init__(self):
        self.statuses: list[int] = []
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Encoding"] == "gzip"
                status = outer.statuses.pop(0) if outer.statuses else 200
                if status == 200:
                    outer.received.append(json.loads(gzip.decompress(body)))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(
                    b'{"detail": "nope"}' if status >= 400 else b'{"duplicate": false}'
                )

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = _Collector()
    yield c
    c.close()


def test_seq_survives_restart_and_files_are_ordered(tmp_path):
    spool = Spool(tmp_path)
    for i in range(3):
        spool.seal({"n": i})
    first = spool.pending()[0].seq
    assert [b.seq for b in spool.pending()] == [first, first + 1, first + 2]
    spool.ack(spool.pending()[0])
    spool.ack(spool.pending()[0])
    spool.ack(spool.pending()[0])
    again = Spool(tmp_path)  # restart with an empty queue: must not reuse seq 0..2
    assert again.seal({"n": 3}).seq == first + 3


def test_seq_derived_from_files_when_state_is_lost(tmp_path):
    spool = Spool(tmp_path)
    spool.seal({})
    last = spool.seal({}).seq
    (tmp_path / "state.json").unlink()
    assert Spool(tmp_path).seal({}).seq > last
    for batch in spool.pending():
        spool.ack(batch)
    (tmp_path / "state.json").unlink()  # state lost with an empty queue: still no reuse
    assert Spool(tmp_path).seal({}).seq > last


def test_size_cap_drops_oldest_and_counts(tmp_path):
    spool = Spool(tmp_path, max_bytes=1)
    spool.seal({"a": "x" * 100})
    newest = spool.seal({"b": "y" * 100}).seq
    pending = spool.pending()
    assert [b.seq for b in pending] == [newest]
    assert spool.dropped_total == 1


def test_retries_on_5xx_and_down_then_delivers_in_order(tmp_path, collector):
    spool = Spool(tmp_path)
    for i in range(3):
        spool.seal({"i": i})
    collector.statuses = [503]
    pusher = Pusher(collector.url, spool, backoff_initial_s=0.01)
    assert pusher.push_once() is False  # 503: kept
    assert len(spool.pending()) == 3
    assert pusher.push_once() is True
    assert [r["i"] for r in collector.received] == [0, 1, 2]
    seqs = [r["seq"] for r in collector.received]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    assert spool.pending() == []
    pusher.close()


def test_unreachable_collector_keeps_everything(tmp_path, collector):
    spool = Spool(tmp_path)
    spool.seal({"i": 0})
    url = collector.url
    collector.close()
    pusher = Pusher(url, spool, timeout_s=1)
    assert pusher.push_once() is False
    assert len(spool.pending()) == 1 and pusher.failures_total == 1
    pusher.close()


def test_4xx_batch_is_set_aside_and_does_not_block_the_queue(tmp_path, collector):
    spool = Spool(tmp_path)
    spool.seal({"i": 0})
    spool.seal({"i": 1})
    collector.statuses = [422]
    pusher = Pusher(collector.url, spool)
    assert pusher.push_once() is True
    assert [r["i"] for r in collector.received] == [1]
    rejected = list((tmp_path / "rejected").glob("*.json.gz"))
    assert len(rejected) == 1 and spool.rejected_total == 1
    assert "422" in rejected[0].with_suffix(".reason").read_text()
    pusher.close()
