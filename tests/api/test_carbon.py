"""Per-cluster carbon intensity and PUE: admin API, recomputation, time-varying intensity."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from jobenergy.core.units import UJ_PER_KWH

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CPU = [("cpu", "package-0")]


def post_batch(client, batch) -> None:
    response = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert response.status_code == 200, response.text


def job(client, job_id: str, cluster: str = "c1") -> dict:
    response = client.get(f"/api/v1/jobs/{job_id}", params={"cluster": cluster})
    assert response.status_code == 200, response.text
    return response.json()


def one_job(make_batch, job_id="9", **kw):
    """All of one CPU source to the job: energy = power_w × interval_s × n_intervals µJ."""
    kw.setdefault("n_intervals", 1)
    return make_batch(jobs={job_id: 1}, unattributed_weight=0, sources=CPU, **kw)


def test_inference_at_55_g_per_kwh(client, make_batch):
    put = client.put("/api/v1/clusters/c1/carbon", json={"source": "constant", "g_per_kwh": 55})
    assert put.status_code == 200, put.text
    assert put.json()["carbon"]["g_per_kwh"] == 55.0
    post_batch(client, one_job(make_batch, power_w=7056.0, interval_s=1.0))  # 1.96e-3 kWh
    client.post("/api/v1/jobs/events", json={"cluster": "c1", "job_id": "9", "event": "start",
                                             "time": T0.isoformat(),
                                             "comment": "model=bert phase=inference"})
    out = job(client, "9")
    assert out["energy_kwh"] == pytest.approx(1.96e-3, rel=1e-12)
    assert out["co2e_kg"] == pytest.approx(1.078e-4, rel=1e-12)
    assert out["co2e_ug"] == 107_800
    assert out["carbon_intensity_g_per_kwh"] == 55.0
    assert out["carbon_intensity_source"] == "constant"
    assert out["carbon_intensity_fallback"] is False
    assert (out["model"], out["phase"]) == ("bert", "inference")
    assert out["tags"] == {"model": "bert", "phase": "inference"}


def test_region_and_mix(client, make_batch):
    post_batch(client, one_job(make_batch))
    before = job(client, "9")
    assert before["carbon_intensity_fallback"] is True
    assert before["carbon_intensity_g_per_kwh"] == 475.0
    resp = client.put("/api/v1/clusters/c1/carbon",
                      json={"source": "region", "country": "FRA", "year": 2023})
    assert resp.status_code == 200, resp.text
    assert resp.json()["recomputed_hours"] == 1
    out = job(client, "9")
    assert round(out["carbon_intensity_g_per_kwh"]) == 55
    assert out["carbon_intensity_source"] == "region"
    assert "Our World in Data" in out["carbon_intensity_sources"][0]
    assert out["co2e_kg"] == pytest.approx(out["facility_energy_kwh"] * 55.27541 / 1000)
    mix = {"coal": 25, "petroleum": 35, "natural_gas": 26, "nuclear": 14}
    resp = client.put("/api/v1/clusters/c1/carbon", json={"source": "mix", "shares": mix})
    assert resp.status_code == 200, resp.text
    assert job(client, "9")["carbon_intensity_g_per_kwh"] == pytest.approx(731.59)
    client.put("/api/v1/clusters/c1/carbon", json={"source": "default"})
    assert job(client, "9")["carbon_intensity_fallback"] is True


def test_pue_change_recomputes_history(client, make_batch):
    post_batch(client, one_job(make_batch, power_w=1000.0, interval_s=3600.0))  # 1 kWh
    assert job(client, "9")["facility_energy_kwh"] == 1.0
    resp = client.put("/api/v1/clusters/c1/pue", json={"pue": 1.25})
    assert resp.status_code == 200, resp.text
    out = job(client, "9")
    assert out["energy_uj"] == UJ_PER_KWH  # raw IT energy untouched
    assert out["pue"] == 1.25 and out["facility_energy_kwh"] == 1.25
    assert out["pue_source"] == "constant"
    assert out["facility_uj"] == UJ_PER_KWH * 5 // 4
    assert client.put("/api/v1/clusters/c1/pue", json={"pue": None}).status_code == 200
    assert job(client, "9")["facility_energy_kwh"] == 1.0
    # Another cluster keeps its own factors.
    post_batch(client, one_job(make_batch, cluster="c2", power_w=1000.0, interval_s=3600.0))
    client.put("/api/v1/clusters/c2/pue", json={"pue": 2.0})
    assert job(client, "9", "c1")["pue"] == 1.0 and job(client, "9", "c2")["pue"] == 2.0


def test_hourly_series_weights_each_hour_by_its_energy(client, make_batch):
    # 30 min at 1 kW in hour 10 (0.5 kWh), then 60 min at 3 kW over 10:30-11:30.
    post_batch(client, one_job(make_batch, start=T0, power_w=1000.0, interval_s=1800.0))
    post_batch(client, one_job(make_batch, seq=1, start=T0 + timedelta(minutes=30),
                               power_w=3000.0, interval_s=3600.0))
    # Hour 10: 0.5 + 1.5 = 2 kWh; hour 11: 1.5 kWh.
    csv = ("Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct),"
           "Carbon Intensity gCO₂eq/kWh (LCA)\n"
           "2026-11-23T10:00:00Z,90,100\n2026-11-23T11:00:00Z,250,300\n")
    resp = client.post("/api/v1/clusters/c1/carbon/series", content=csv.encode(),
                       headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["carbon"]["series"]["points"] == 2
    out = job(client, "9")
    assert out["energy_kwh"] == pytest.approx(3.5, rel=1e-12)
    expected_g = 2.0 * 100 + 1.5 * 300
    assert out["co2e_kg"] == pytest.approx(expected_g / 1000, rel=1e-9)
    assert out["carbon_intensity_g_per_kwh"] == pytest.approx(expected_g / 3.5, rel=1e-9)
    assert out["carbon_intensity_source"] == "series"
    assert out["carbon_intensity_fallback"] is False
    # A corrected point recomputes only what it covers.
    fix = {"points": [{"time": "2026-11-23T11:00:00Z", "value": 200}]}
    assert client.post("/api/v1/clusters/c1/carbon/series", json=fix).status_code == 200
    assert job(client, "9")["co2e_kg"] == pytest.approx((200 + 1.5 * 200) / 1000, rel=1e-9)
    assert client.delete("/api/v1/clusters/c1/carbon/series").status_code == 200
    assert job(client, "9")["carbon_intensity_fallback"] is True


def test_pue_series(client, make_batch):
    post_batch(client, one_job(make_batch, start=T0, power_w=1000.0, interval_s=7200.0))
    points = [{"time": T0.isoformat(), "value": 1.2},
              {"time": (T0 + timedelta(hours=1)).isoformat(), "value": 1.6}]
    resp = client.post("/api/v1/clusters/c1/pue/series", json={"points": points})
    assert resp.status_code == 200, resp.text
    out = job(client, "9")
    assert out["facility_energy_kwh"] == pytest.approx(1.2 + 1.6, rel=1e-12)
    assert out["pue"] == pytest.approx(1.4) and out["pue_source"] == "series"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"),
    [
        ("put", "carbon", {"json": {"source": "region", "country": "XXX"}}, 422, "alpha-3"),
        ("put", "carbon", {"json": {"source": "constant"}}, 422, "g_per_kwh"),
        ("put", "carbon", {"json": {"source": "constant", "g_per_kwh": -1}}, 422, "g_per_kwh"),
        ("put", "carbon", {"json": {"source": "mix", "shares": {"coal": 0}}}, 422, "above 0"),
        ("put", "carbon", {"json": {"source": "constant", "g_per_kwh": 5, "country": "FRA"}},
         422, "takes no country"),
        ("put", "pue", {"json": {"pue": 0.8}}, 422, "pue"),
        ("put", "pue", {"content": b"{"}, 400, "malformed"),
        ("post", "carbon/series", {"json": {"points": [{"time": "2026-11-23T10:00:00Z",
                                                        "value": -3}]}}, 422, "outside"),
        ("post", "pue/series", {"json": {"points": [{"time": "2026-11-23T10:00:00Z",
                                                     "value": 0.5}]}}, 422, "outside"),
        ("post", "carbon/series", {"content": b"when,what\nx,y\n",
                                   "headers": {"Content-Type": "text/csv"}}, 422, "headers"),
        ("post", "carbon/series", {"json": {"points": []}}, 422, "points"),
        # These gave 500: a CSV field past the csv module's 128 KiB limit, dates that overflow.
        ("post", "carbon/series", {"content": b"time,value\n2026-11-23T10:00:00Z,"
                                   + b"1" * (128 * 1024 + 1) + b"\n",
                                   "headers": {"Content-Type": "text/csv"}}, 422,
         "CSV line 2: field larger"),
        ("post", "carbon/series", {"content": b"time,value\n9999-12-31T23:30:00Z,5\n",
                                   "headers": {"Content-Type": "text/csv"}}, 422, "2100"),
        ("post", "carbon/series", {"content": b"time,value\n-1e11,5\n",
                                   "headers": {"Content-Type": "text/csv"}}, 422, "CSV line 2"),
        ("post", "pue/series", {"json": {"points": [{"time": "9999-12-31T23:30:00Z",
                                                     "value": 1.2}]}}, 422, "2100"),
        ("post", "pue/series", {"json": {"points": [{"time": "1900-01-01T00:00:00Z",
                                                     "value": 1.2}]}}, 422, "1970"),
    ],
)
def test_bad_input_changes_nothing(client, make_batch, db_url, db_snapshot, method, path,
                                   kwargs, status, words):
    post_batch(client, one_job(make_batch))
    before = db_snapshot(db_url)
    response = getattr(client, method)(f"/api/v1/clusters/c1/{path}", **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert db_snapshot(db_url) == before


def _stored(db_snapshot, db_url) -> dict:
    """Every table but the bookkeeping of background work (``*_state``: when it last ran)."""
    return {k: v for k, v in db_snapshot(db_url).items() if not k.endswith("_state")}


def _defaults_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "jobenergy.collector.clusters" and r.levelno == logging.WARNING]


def test_server_flags_seed_an_empty_database(make_client, server_settings, make_batch, caplog):
    """Flags are the defaults of clusters without their own, stored on the first start and
    replaced by a later start while no energy is stored (nothing was computed with them)."""
    make_client(server_settings.model_copy(update={"pue": 1.5}))
    client = make_client(server_settings.model_copy(
        update={"pue": 1.2, "carbon_intensity_g_per_kwh": 100.0}))
    assert _defaults_warnings(caplog) == []
    post_batch(client, one_job(make_batch, power_w=1000.0, interval_s=3600.0))
    client.put("/api/v1/clusters/other/pue", json={"pue": 1.1})
    out = job(client, "9")
    assert out["facility_energy_kwh"] == 1.2 and out["pue_source"] == "default"
    assert out["carbon_intensity_g_per_kwh"] == 100.0
    assert out["co2e_kg"] == pytest.approx(0.12)
    listed = {c["cluster"]: c for c in client.get("/api/v1/clusters").json()}
    assert listed["other"]["pue"] == {"value": 1.1, "source": "constant", "series": None}
    assert listed["c1"]["carbon"]["source"] == "constant"


def test_a_restart_never_rewrites_stored_factors_or_history(
    make_client, server_settings, make_batch, db_url, db_snapshot, caplog,
):
    """A server started again with other flags (here the built-in 1.0 and world average)
    leaves the stored defaults and every stored total alone, and says so once; without
    flags it says nothing. Factors change through ``jobenergy cluster`` only."""
    from jobenergy.collector.settings import ServerSettings

    first = make_client(server_settings.model_copy(
        update={"pue": 1.3, "carbon_intensity_g_per_kwh": 55.0}))
    post_batch(first, one_job(make_batch, power_w=1000.0, interval_s=3600.0))
    before = job(first, "9")
    assert before["facility_energy_kwh"] == 1.3 and before["co2e_kg"] == pytest.approx(0.0715)
    stored = _stored(db_snapshot, db_url)

    again = make_client(server_settings)  # pue=1.0, carbon_intensity_g_per_kwh=None given
    assert _stored(db_snapshot, db_url) == stored
    assert _defaults_warnings(caplog) == [
        "server settings not applied: PUE 1 given, 1.3 stored; carbon intensity world "
        "average given, 55 g/kWh stored: the database holds energy computed with the stored "
        "defaults, and a server start never rewrites them; change a cluster's factors with "
        "`jobenergy cluster set-pue|set-carbon` (audited)"]
    assert job(again, "9") == before
    # New energy is computed with the stored defaults, and the warning is not repeated.
    post_batch(again, one_job(make_batch, job_id="10", seq=1, start=T0 + timedelta(hours=1),
                              power_w=1000.0, interval_s=3600.0))
    assert job(again, "10")["facility_energy_kwh"] == 1.3
    assert len(_defaults_warnings(caplog)) == 1

    caplog.clear()
    make_client(server_settings.model_copy(  # the stored values again: nothing to say
        update={"pue": 1.3, "carbon_intensity_g_per_kwh": 55.0}))
    unset = ServerSettings(db_url=db_url, auth="none", migrate=False)
    assert not {"pue", "carbon_intensity_g_per_kwh"} & unset.model_fields_set
    settled = _stored(db_snapshot, db_url)
    make_client(unset)
    assert _stored(db_snapshot, db_url) == settled and _defaults_warnings(caplog) == []


def test_factor_revisions_name_the_hours_each_change_rewrote(client, make_batch):
    """The Slurm sync follows these to rewrite AdminComments (cli/slurm.py)."""
    assert client.get("/api/v1/clusters/c1").json()["factors_revision"] == 0
    post_batch(client, one_job(make_batch, start=T0, power_w=1000.0, interval_s=7200.0))
    client.put("/api/v1/clusters/c1/pue", json={"pue": 1.25})
    first = client.get("/api/v1/clusters/c1").json()["factors_revision"]
    assert first > 0
    client.put("/api/v1/clusters/c1/pue", json={"pue": 1.25})  # same value: nothing rewritten
    fix = {"points": [{"time": (T0 + timedelta(hours=1)).isoformat(), "value": 100}]}
    assert client.post("/api/v1/clusters/c1/carbon/series", json=fix).status_code == 200
    resp = client.get("/api/v1/clusters/c1/factor-changes", params={"after": 0})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    changes = body["changes"]
    assert [c["revision"] for c in changes] == [first, body["revision"]]
    assert body["revision"] > first
    assert client.get("/api/v1/clusters/c1").json()["factors_revision"] == body["revision"]
    span = [(datetime.fromisoformat(c["start"]), datetime.fromisoformat(c["end"]), c["jobs"])
            for c in changes]
    assert span == [(T0, T0 + timedelta(hours=2), 1),  # the PUE: both hours of job 9
                    (T0 + timedelta(hours=1), T0 + timedelta(hours=2), 1)]  # only hour 11
    after = client.get("/api/v1/clusters/c1/factor-changes", params={"after": first}).json()
    assert [c["revision"] for c in after["changes"]] == [body["revision"]]
    assert client.get("/api/v1/clusters/c2/factor-changes").json() == {
        "cluster": "c2", "revision": 0, "changes": []}


def _hourly_csv(points: int) -> bytes:
    rows = [f"{(T0 + timedelta(hours=i)).isoformat()},{100 + i % 7}" for i in range(points)]
    return ("time,value\n" + "\n".join(rows) + "\n").encode()


def test_series_imports_are_capped(make_client, server_settings, make_batch, db_url,
                                   db_snapshot):
    """A series import is refused (413) past ``max_series_points`` or ``max_series_bytes``."""
    import json

    points = 50
    too_many = json.dumps({"points": [
        {"time": (T0 + timedelta(hours=i)).isoformat(), "value": 1.1} for i in range(points + 1)
    ]}).encode()
    settings = server_settings.model_copy(
        update={"max_series_points": points, "max_series_bytes": len(too_many) + 64})
    client = make_client(settings)
    post_batch(client, one_job(make_batch))
    csv_headers = {"Content-Type": "text/csv"}
    before = db_snapshot(db_url)
    rows = client.post("/api/v1/clusters/c1/carbon/series", content=_hourly_csv(points + 1),
                       headers=csv_headers)
    assert rows.status_code == 413, rows.text
    assert f"at most {points} points" in rows.json()["detail"]
    js = client.post("/api/v1/clusters/c1/pue/series", content=too_many,
                     headers={"Content-Type": "application/json"})
    assert js.status_code == 413 and f"at most {points} points" in js.json()["detail"]
    big = _hourly_csv(points).replace(b"time,value", b"time,value" + b" " * len(too_many))
    assert len(big) > settings.max_series_bytes
    size = client.post("/api/v1/clusters/c1/carbon/series", content=big, headers=csv_headers)
    assert size.status_code == 413 and str(settings.max_series_bytes) in size.json()["detail"]
    assert db_snapshot(db_url) == before
    at_cap = client.post("/api/v1/clusters/c1/carbon/series", content=_hourly_csv(points),
                         headers=csv_headers)
    assert at_cap.status_code == 200, at_cap.text
    assert at_cap.json()["carbon"]["series"]["points"] == points


def test_csv_series_is_parsed_row_by_row():
    """Parsing stops at the first point past the cap, without reading the rest of the stream."""
    from jobenergy.core.series import SeriesTooLarge, parse_series_csv

    read = []

    def lines():
        yield "time,value\n"
        for i in range(1_000_000):
            read.append(i)
            yield f"{(T0 + timedelta(hours=i)).isoformat()},1\n"

    with pytest.raises(SeriesTooLarge, match="at most 10 points"):
        parse_series_csv(lines(), max_points=10)
    assert len(read) == 11
