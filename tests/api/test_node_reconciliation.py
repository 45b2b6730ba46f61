"""GET /api/v1/nodes/{node}/reconciliation: BMC vs RAPL + GPU, other and flagged intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobenergy.core.schema import Batch, Interval, JobSample, SourceEnergy

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def _src(component, source, jobs, node_uj, estimated=False):
    return SourceEnergy(component=component, source=source, measured_uj=sum(jobs.values())
                        + node_uj, jobs_uj=jobs, unattributed_uj=node_uj, estimated=estimated)


def _interval(i, sources):
    start = T0 + timedelta(seconds=10 * i)
    return Interval(start=start, end=start + timedelta(seconds=10), sources=sources,
                    jobs=[JobSample(job_id="42", cpus=4)])


def test_reconciliation_of_a_node(client):
    intervals = [
        _interval(0, [_src("cpu", "package-0", {"42": 3_000}, 1_000),
                      _src("gpu", "gpu/A", {"42": 6_000}, 0),
                      _src("bmc", "bmc", {}, 12_500, estimated=True),
                      _src("other", "bmc/other", {"42": 2_250}, 250, estimated=True)]),
        _interval(1, [_src("cpu", "package-0", {"42": 3_000}, 0),
                      _src("gpu", "gpu/A", {"42": 6_000}, 0),
                      _src("bmc", "bmc/flagged", {}, 8_000, estimated=True),
                      _src("other", "bmc/other", {}, 0, estimated=True)]),
    ]
    batch = Batch(schema_version=1, cluster="c1", node="n1", boot_id="b", seq=0,
                  intervals=intervals)
    response = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert response.status_code == 200, response.text
    got = client.get("/api/v1/nodes/n1/reconciliation", params={
        "cluster": "c1", "start": T0.isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat()}).json()
    assert got["bmc_uj"] == 20_500
    assert got["measured_uj"] == 19_000
    assert got["other_uj"] == 2_500
    assert got["flagged_intervals"] == 1
    assert got["ratio"] == 20_500 / 19_000 and got["covered"]
    assert got["bmc_kwh"] == 20_500 / 3_600_000_000_000
    nodes = client.get("/api/v1/nodes", params={"cluster": "c1"}).json()["nodes"]
    bmc = next(r for r in nodes if r["component"] == "bmc")
    assert bmc["attributed_uj"] == 0  # the BMC's own figure is never a job's


def test_the_bmc_figure_is_refused_as_a_job_share(client):
    body = Batch(schema_version=1, cluster="c1", node="n1", boot_id="b", seq=0,
                 intervals=[_interval(0, [_src("cpu", "package-0", {}, 1)])]).model_dump()
    body["intervals"][0]["sources"][0].update(component="bmc", jobs_uj={"42": 1},
                                              unattributed_uj=0)
    for interval in body["intervals"]:
        interval["start"], interval["end"] = interval["start"].isoformat(), interval[
            "end"].isoformat()
    response = client.post("/api/v1/batches", json=body)
    assert response.status_code == 422
    assert "never attributed" in response.text


def _post(client, node, intervals):
    batch = Batch(schema_version=1, cluster="c1", node=node, boot_id="b", seq=0,
                  intervals=intervals)
    response = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert response.status_code == 200, response.text


def test_a_jobs_quality_says_whether_a_bmc_reconciled_it(client):
    _post(client, "n1", [_interval(0, [
        _src("cpu", "package-0", {"42": 3_000}, 0),
        _src("bmc", "bmc", {}, 4_000, estimated=True),
        _src("other", "bmc/other", {"42": 1_000}, 0, estimated=True)])])
    job = client.get("/api/v1/jobs/42", params={"cluster": "c1"}).json()
    assert job["by_component"]["other"] == 1_000 and job["energy_uj"] == 4_000
    assert job["quality"]["bmc_reconciled"] and job["quality"]["bmc_nodes"] == ["n1"]
    # A second node without a BMC: the job's energy there is not the wall's.
    _post(client, "n2", [_interval(0, [_src("cpu", "package-0", {"42": 500}, 0)])])
    job = client.get("/api/v1/jobs/42", params={"cluster": "c1"}).json()
    assert not job["quality"]["bmc_reconciled"] and job["quality"]["bmc_nodes"] == ["n1"]


def test_a_job_on_flagged_windows_only_is_not_reconciled(client):
    _post(client, "n1", [_interval(0, [
        _src("cpu", "package-0", {"42": 3_000}, 0),
        _src("bmc", "bmc/flagged", {}, 2_000, estimated=True),
        _src("other", "bmc/other", {}, 0, estimated=True)])])
    quality = client.get("/api/v1/jobs/42", params={"cluster": "c1"}).json()["quality"]
    assert not quality["bmc_reconciled"] and quality["bmc_nodes"] == []
