"""GET /metrics of the server: process counters and totals read from the database (issue 12)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from jobenergy.api.app import create_app
from jobenergy.collector.db import make_engine
from jobenergy.collector.metrics import CollectorMetrics, DatabaseTotals
from jobenergy.collector.routes_metrics import allowed, metrics_networks
from jobenergy.core.version import VERSION


def scrape(client) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    return response.text, samples


def post(client, batch) -> dict:
    response = client.post("/api/v1/batches", content=batch.model_dump_json().encode(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def expected_joules(*batches) -> dict[tuple[str, str, str], float]:
    """Return (kind, cluster, component) -> J, summed as integer µJ first."""
    totals: dict[tuple[str, str, str], int] = {}
    for batch in batches:
        for interval in batch.intervals:
            for src in interval.sources:
                for kind, uj in (("measured", src.measured_uj),
                                 ("unattributed", src.unattributed_uj)):
                    key = (kind, batch.cluster, src.component)
                    totals[key] = totals.get(key, 0) + uj
    return {key: uj / 1_000_000 for key, uj in totals.items()}


def energy(samples, kind: str, cluster: str, component: str) -> float:
    return samples[(f"jobenergy_collector_{kind}_energy_joules_total",
                    (("cluster", cluster), ("component", component)))]


def test_batches_are_counted_and_energy_is_read_from_the_database(
    client, make_batch, server_settings, make_client,
):
    first = make_batch(jobs={"4242": 1}, uid=31337)
    other = make_batch(cluster="c2", node="m7", n_intervals=2)
    records = post(client, first)["records"] + post(client, other)["records"]
    assert post(client, first)["duplicate"] is True
    bad = client.post("/api/v1/batches", content=b'{"schema_version": 1, "cluster": "c1"}',
                      headers={"Content-Type": "application/json"})
    assert bad.status_code == 422
    text, samples = scrape(client)

    assert samples[("jobenergy_collector_batches_total", (("outcome", "stored"),))] == 2
    assert samples[("jobenergy_collector_batches_total", (("outcome", "duplicate"),))] == 1
    refused = "jobenergy_collector_batches_refused_total"
    assert samples[(refused, (("reason", "422"),))] == 1
    assert samples[(refused, (("reason", "409"),))] == 0  # present before the first one
    assert samples[("jobenergy_collector_records_total", ())] == records
    assert samples[("jobenergy_collector_ingest_duration_seconds_count", ())] == 3
    assert samples[("jobenergy_collector_database_errors_total", (("operation", "ingest"),))] == 0
    assert samples[("jobenergy_build_info", (("version", VERSION),))] == 1
    for (kind, cluster, component), joules in expected_joules(first, other).items():
        assert energy(samples, kind, cluster, component) == joules
    last = "jobenergy_collector_node_last_batch_timestamp_seconds"
    assert samples[(last, (("cluster", "c1"), ("node", "n1")))] == (
        first.intervals[-1].end.timestamp())
    assert samples[("jobenergy_collector_node_last_interval_sources",
                    (("cluster", "c2"), ("node", "m7")))] == len(other.intervals[-1].sources)
    # Open without credentials, so nothing about jobs or users.
    assert "_created" not in text
    assert "4242" not in text and "31337" not in text
    labels = {name for (_, pairs) in samples for name, _ in pairs}
    assert labels <= {"cluster", "node", "component", "outcome", "reason", "operation",
                      "version", "le"}

    # A restarted server starts its own counters at zero; the database totals carry on.
    _, again = scrape(make_client(server_settings))
    assert again[("jobenergy_collector_batches_total", (("outcome", "stored"),))] == 0
    for (kind, cluster, component), joules in expected_joules(first, other).items():
        assert energy(again, kind, cluster, component) == joules


def test_refusals_of_a_node_are_read_from_the_database(client, make_batch):
    batch = make_batch()
    post(client, batch)
    changed = make_batch(power_w=5.0)  # same key, other content: 409
    response = client.post("/api/v1/batches", content=changed.model_dump_json().encode(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 409
    _, samples = scrape(client)
    assert samples[("jobenergy_collector_batches_refused_total", (("reason", "409"),))] == 1
    assert samples[("jobenergy_collector_node_batches_refused_total",
                    (("cluster", "c1"), ("node", "n1")))] == 1


def test_openmetrics_when_asked(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_metrics_allow(server_settings):
    def status(allow: str, peer: str) -> int:
        settings = server_settings.model_copy(
            update={"metrics_allow": type(server_settings)(metrics_allow=allow).metrics_allow})
        with TestClient(create_app(settings), client=(peer, 40000)) as client:
            return client.get("/metrics").status_code

    assert status("10.0.0.0/8, 127.0.0.1", "127.0.0.1") == 200
    assert status("10.0.0.0/8", "127.0.0.1") == 403
    assert status("10.0.0.0/8", "10.9.8.7") == 200
    assert status("", "127.0.0.1") == 403  # empty: nobody


def test_allowed_addresses():
    everyone = metrics_networks(("0.0.0.0/0", "::/0"))
    assert allowed(None, everyone) and allowed("testclient", everyone)
    lan = metrics_networks(("192.168.0.0/16",))
    assert allowed("::ffff:192.168.1.2", lan)  # an IPv4 peer on a dual-stack socket
    assert not allowed("192.169.0.1", lan) and not allowed(None, lan)


def test_an_unreachable_database_is_counted_and_its_families_left_out(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'absent' / 'x.db'}")  # no such folder
    try:
        metrics = CollectorMetrics(sessionmaker(engine))
        names = {m.name for m in metrics.registry.collect()}
        assert "jobenergy_collector_measured_energy_joules" not in names
        assert metrics.registry.get_sample_value(
            "jobenergy_collector_database_errors_total", {"operation": "metrics"}) == 1
    finally:
        engine.dispose()


def test_database_totals_are_cached(db_url, make_batch):
    from jobenergy.collector.ingest import ingest_batch

    engine = make_engine(db_url)
    try:
        factory = sessionmaker(engine)
        metrics = CollectorMetrics(factory)
        totals = DatabaseTotals(factory, metrics.database_errors, max_age_s=3600)
        assert [m.samples for m in totals.collect()][0] == []
        with factory.begin() as session:
            ingest_batch(session, make_batch())
        assert [m.samples for m in totals.collect()][0] == []  # the cached reading
        totals.max_age_s = 0
        assert [m.samples for m in totals.collect()][0] != []
    finally:
        engine.dispose()
