import gzip
import json
import logging
import os
import stat
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobenergy.agent.continuity import CounterRecord
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.pusher import Pusher
from jobenergy.agent.readings import Reading
from jobenergy.agent.spool import Spool, split_by_size


class _Collector:
    """A real HTTP server on 127.0.0.1 answering with programmed status codes."""

    def __init__(self):
        self.statuses: list[int] = []
        self.received: list[dict] = []
        self.detail = "nope"
        self.ok_body = b'{"duplicate": false}'
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
                    json.dumps({"detail": outer.detail}).encode()
                    if status >= 400
                    else outer.ok_body
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
    assert again.seal({"n": 3}).seq > first + 2


def test_state_is_written_once_per_block_and_a_restart_skips_the_rest(tmp_path):
    block = 5
    spool = Spool(tmp_path, seq_block=block)
    first = spool.seal({}).seq
    state = tmp_path / "state.json"
    written = state.stat().st_mtime_ns, state.stat().st_ino
    for _ in range(block - 1):  # the rest of the block: no state write
        spool.seal({})
    assert (state.stat().st_mtime_ns, state.stat().st_ino) == written
    last = spool.seal({}).seq  # the first of the next block: reserved first
    assert last == first + block
    assert json.loads(state.read_text())["next_seq"] == last + block
    # A crash after that seal: the restart starts beyond every number reserved.
    assert Spool(tmp_path, seq_block=block).seal({}).seq == last + block
    assert Spool(tmp_path).seal({}).seq == last + 2 * block  # that restart reserved one


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


@pytest.mark.parametrize("garbled", ["{}", "not json", '{"next_seq": "x"}', ""])
def test_an_unreadable_state_never_reuses_a_number(tmp_path, garbled):
    spool = Spool(tmp_path)
    last = spool.seal({}).seq
    spool.ack(spool.pending()[0])  # an empty queue: only the state knew the numbers
    (tmp_path / "state.json").write_text(garbled)
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


def _rejected_count(metrics: AgentMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "jobenergy_agent_batches_rejected_total", {"reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (409, "conflict: batch (t, n1, b, 7) was stored with other content"),
        (413, "body larger than 33554432 bytes"),
        (422, "intervals.0.phases.0.metrics.loss: Input should be a finite number\n" + "x" * 900),
    ],
)
def test_refused_batch_is_kept_counted_and_logged_once(tmp_path, collector, caplog, status, detail):
    # Issue 9: a refused batch (409 included: its key was claimed with other content) is never
    # a success and never silently dropped.
    spool = Spool(tmp_path)
    refused = spool.seal({"i": 0})
    spool.seal({"i": 1})
    collector.statuses = [status]
    collector.detail = detail
    metrics = AgentMetrics()
    pusher = Pusher(collector.url, spool, metrics=metrics)
    with caplog.at_level(logging.DEBUG, logger="jobenergy.agent"):
        assert pusher.push_once() is True
    assert [r["i"] for r in collector.received] == [1] and spool.pending() == []
    kept = tmp_path / "rejected" / refused.path.name
    assert json.loads(gzip.decompress(kept.read_bytes()))["i"] == 0
    assert f"HTTP {status}" in kept.with_suffix(".reason").read_text()
    assert _rejected_count(metrics, str(status)) == 1
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    line = lines[0].getMessage()
    assert f"status={status}" in line and detail[:40] in line and f"seq={refused.seq}" in line
    assert len(line) < 700 and "\n" not in line  # truncated, one line
    pusher.close()


def test_duplicate_answer_is_a_success(tmp_path, collector):
    spool = Spool(tmp_path)
    spool.seal({"i": 0})
    collector.ok_body = b'{"duplicate": true}'
    metrics = AgentMetrics()
    pusher = Pusher(collector.url, spool, metrics=metrics)
    assert pusher.push_once() is True
    assert spool.pending() == [] and not list((tmp_path / "rejected").iterdir())
    assert pusher.sent_total == 1 and spool.rejected_total == 0
    pusher.close()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """Run with umask 000, the worst a site may set: modes must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_spool_folders_and_files_are_private_whatever_the_umask(tmp_path, collector, open_umask):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o755)  # made by an installer: tightened
    spool = Spool(spool_dir)
    spool.seal({"i": 0})
    spool.seal({"i": 1})
    collector.statuses = [422]
    pusher = Pusher(collector.url, spool)
    spool.seal({"i": 2})
    pusher.push_once()
    pusher.close()
    record = CounterRecord(spool_dir, "boot")
    record.save(datetime.now(UTC), {"package-0": Reading("cpu", "package-0", 1, 2**32, False)})
    spool.seal({"i": 3})
    folders = [spool_dir, spool_dir / "batches", spool_dir / "rejected"]
    assert {str(p): _mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    files = [p for p in spool_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"state.json", "counters.json"} <= names and any(n.endswith(".reason") for n in names)
    assert {str(p): _mode(p) for p in files} == {str(p): 0o600 for p in files}


def test_split_by_size_keeps_order_and_each_group_within_budget():
    texts = ["a" * 10, "é" * 10, "b" * 30, "c" * 5, "d" * 100]
    groups = split_by_size(texts, 45)
    assert [t for g in groups for t in g] == texts
    assert groups == [["a" * 10, "é" * 10], ["b" * 30, "c" * 5], ["d" * 100]]  # é: 2 bytes
    assert split_by_size([], 10) == []


def test_an_outage_is_logged_when_it_starts_changes_and_ends(tmp_path, collector, caplog):
    """Not a line per retry: an outage of hours would repeat itself every minute."""
    caplog.set_level(logging.DEBUG, logger="jobenergy.agent.pusher")
    spool = Spool(tmp_path)
    spool.seal({"i": 0})
    collector.statuses = [503, 503, 503, 502]
    pusher = Pusher(collector.url, spool, backoff_initial_s=0.01)
    for _ in range(4):
        assert pusher.push_once() is False
    assert pusher.push_once() is True
    pusher.close()
    logged = [(r.levelname, r.getMessage().split(" backoff_s")[0]) for r in caplog.records
              if r.name == "jobenergy.agent.pusher"]
    assert logged == [
        ("WARNING", "push failed, will retry reason=collector answered HTTP 503"),
        ("DEBUG", "push failed, will retry reason=collector answered HTTP 503"),
        ("DEBUG", "push failed, will retry reason=collector answered HTTP 503"),
        ("WARNING", "push failed, will retry reason=collector answered HTTP 502"),
        ("INFO", "push delivered again after failed_pushes=4"),
    ]
