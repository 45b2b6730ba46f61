"""The agent's /metrics follow Prometheus conventions (issue 12)."""

import time

from prometheus_client import generate_latest

from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.pusher import Pusher
from jobenergy.agent.spool import Spool


def _value(metrics: AgentMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


def test_energy_is_integer_uj_inside_and_joules_outside():
    metrics = AgentMetrics()
    # 10^7 additions of 0.1 J would drift in float; integers cannot.
    for _ in range(1000):
        metrics.add_energy("cpu", "package-0", 100_001, 7)
    metrics.add_energy("gpu", "gpu/GPU-0", 2**53 + 1, 0)  # beyond float's exact integers
    name = "jobenergy_agent_measured_energy_joules_total"
    assert _value(metrics, name, {"component": "cpu", "source": "package-0"}) == 100.001
    assert metrics._measured_uj[("gpu", "gpu/GPU-0")] == 2**53 + 1  # kept exact
    unattributed = "jobenergy_agent_unattributed_energy_joules_total"
    assert _value(metrics, unattributed, {"component": "cpu"}) == 0.007


def test_running_totals_are_counters_read_when_scraped():
    metrics = AgentMetrics()
    state = {"dropped": 0, "failures": 0, "sent": 0}
    metrics.watch(spool_dropped=lambda: state["dropped"],
                  push_failures=lambda: state["failures"], batches_sent=lambda: state["sent"])
    state.update(dropped=3, failures=5, sent=8)
    assert _value(metrics, "jobenergy_agent_spool_dropped_batches_total") == 3
    assert _value(metrics, "jobenergy_agent_push_failures_total") == 5
    assert _value(metrics, "jobenergy_agent_batches_sent_total") == 8
    metrics.set_gpu_errors({"GpuIsLost": 1, "counter_reset": 2})
    assert _value(metrics, "jobenergy_agent_gpu_errors_total", {"reason": "counter_reset"}) == 2
    text = generate_latest(metrics.registry).decode()
    assert "_created" not in text
    assert "# TYPE jobenergy_agent_gpu_errors_total counter" in text
    assert "process_start_time_seconds" in text  # for "never pushed since it started"


def test_last_push_success_is_set_when_a_batch_is_acknowledged(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"duplicate": false, "records": 1}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    metrics = AgentMetrics()
    spool = Spool(tmp_path)
    spool.seal({"i": 0})
    pusher = Pusher(f"http://127.0.0.1:{server.server_address[1]}", spool, metrics=metrics)
    try:
        name = "jobenergy_agent_last_push_success_timestamp_seconds"
        assert _value(metrics, name) == 0
        before = time.time()
        assert pusher.push_once() is True
        assert before <= _value(metrics, name) <= time.time()
    finally:
        pusher.close()
        server.shutdown()
        server.server_close()
