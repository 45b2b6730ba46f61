"""GET /api/v1/jobs/{job_id} and GET /api/v1/jobs: fields, arithmetic, filters, pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from jobenergy.collector.db import make_engine
from jobenergy.collector.models import EnergyInterval
from jobenergy.core.units import UJ_PER_KWH

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
GPU_SOURCES = (("cpu", "package-0"), ("dram", "package-0/dram"), ("gpu", "gpu/GPU-aaaa"),
               ("gpu", "gpu/GPU-bbbb"), ("psys", "psys"))


def post_batch(client, batch) -> None:
    response = client.post("/api/v1/batches", content=batch.model_dump_json())
    assert response.status_code == 200, response.text


def post_event(client, **body) -> None:
    body.setdefault("cluster", "c1")
    body["time"] = body["time"].isoformat()
    response = client.post("/api/v1/jobs/events", json=body)
    assert response.status_code == 200, response.text


def shares(batches, job_id, component=None, node=None) -> int:
    return sum(
        src.jobs_uj.get(job_id, 0)
        for batch in batches if node is None or batch.node == node
        for interval in batch.intervals
        for src in interval.sources if component is None or src.component == component
    )


@pytest.fixture
def scenario(client, make_batch):
    """Job 500 on n1+n2 with two GPUs each, sharing n1 with job 501; start and end events."""
    post_event(client, job_id="500", event="start", time=T0, user="alice", uid=1001,
               account="phys", partition="gpu", name="train", nodes=["n1", "n2"],
               gpus=["0", "1"], tags={"model": "llama"})
    batches = [
        make_batch(node="n1", jobs={"500": 3, "501": 1}, sources=GPU_SOURCES, n_intervals=6,
                   power_w=250.0),
        make_batch(node="n2", jobs={"500": 1}, unattributed_weight=0, sources=GPU_SOURCES,
                   n_intervals=6, power_w=300.0, estimated=True, wraps=1),
    ]
    for batch in batches:
        post_batch(client, batch)
    post_event(client, job_id="500", event="end", time=T0 + timedelta(seconds=60),
               state="COMPLETED", exit_code=0)
    return batches


def test_job_fields(client, scenario):
    response = client.get("/api/v1/jobs/500", params={"cluster": "c1"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["job_id"], job["cluster"], job["user"], job["uid"]) == ("500", "c1", "alice", 1001)
    assert (job["account"], job["partition"], job["name"]) == ("phys", "gpu", "train")
    assert (job["state"], job["exit_code"], job["nodes"]) == ("COMPLETED", "0", ["n1", "n2"])
    assert datetime.fromisoformat(job["start"]) == T0
    assert datetime.fromisoformat(job["end"]) == T0 + timedelta(seconds=60)
    assert job["elapsed_s"] == 60.0
    assert job["tags"] == {"model": "llama"}

    expected = {c: shares(scenario, "500", c) for c in ("cpu", "dram", "gpu")}
    assert job["by_component"] == expected
    assert job["energy_uj"] == sum(expected.values()) == shares(scenario, "500")
    assert job["by_node"] == {
        node: {c: shares(scenario, "500", c, node) for c in ("cpu", "dram", "gpu")}
        for node in ("n1", "n2")
    }
    devices = {(d["node"], d["source"]): d for d in job["devices"]}
    assert set(devices) == {(n, s) for n in ("n1", "n2") for s in ("gpu/GPU-aaaa", "gpu/GPU-bbbb")}
    assert all(d["device_name"] == "NVIDIA H100 80GB HBM3" for d in devices.values())
    assert sum(d["energy_uj"] for d in devices.values()) == expected["gpu"]

    quality = job["quality"]
    assert quality["sources"] == ["gpu/GPU-aaaa", "gpu/GPU-bbbb", "package-0", "package-0/dram"]
    assert quality["samples"] == 6
    assert quality["covered_s"] == 60.0 and quality["coverage"] == pytest.approx(1.0)
    assert quality["wraps"] == 6  # n2's cpu source: one wrap in each of 6 intervals
    assert quality["estimated_components"] == ["gpu"]
    assert quality["estimated_uj"] == shares(scenario[1:], "500", "gpu")


def test_energy_and_carbon_arithmetic(make_client, server_settings, make_batch):
    client = make_client(server_settings.model_copy(
        update={"pue": 1.5, "carbon_intensity_g_per_kwh": 300.0}))
    # 1000 W for one hour on one source, all to the job: exactly 1 kWh.
    batch = make_batch(jobs={"9": 1}, unattributed_weight=0, sources=[("cpu", "package-0")],
                       n_intervals=1, interval_s=3600.0, power_w=1000.0)
    assert shares([batch], "9") == UJ_PER_KWH
    post_batch(client, batch)
    job = client.get("/api/v1/jobs/9").json()
    assert job["energy_uj"] == UJ_PER_KWH
    assert job["by_component"] == {"cpu": UJ_PER_KWH, "dram": 0}
    assert job["energy_kwh"] == 1.0
    assert job["pue"] == 1.5 and job["facility_energy_kwh"] == 1.5
    assert job["carbon_intensity_g_per_kwh"] == 300.0
    assert job["carbon_intensity_fallback"] is False
    assert job["carbon_intensity_source"] == "constant"
    assert job["co2e_kg"] == pytest.approx(1.5 * 300.0 / 1000.0)
    assert job["devices"] == [] and job["user"] is None and job["elapsed_s"] is None


def test_fallback_carbon_intensity(client, make_batch):
    batch = make_batch(jobs={"9": 1})
    post_batch(client, batch)
    job = client.get("/api/v1/jobs/9").json()
    kwh = shares([batch], "9") / 3.6e12
    assert job["energy_kwh"] == pytest.approx(kwh, rel=1e-12)
    assert job["carbon_intensity_fallback"] is True
    assert job["carbon_intensity_g_per_kwh"] == 475.0
    assert job["carbon_intensity_source"] == "world-average fallback"
    assert job["co2e_kg"] == pytest.approx(kwh * 475.0 / 1000.0, rel=1e-12)


def test_lookup_never_reads_intervals(client, scenario, db_url):
    before = client.get("/api/v1/jobs/500").json()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        assert conn.execute(delete(EnergyInterval)).rowcount > 0
    engine.dispose()
    assert client.get("/api/v1/jobs/500").json() == before


def test_unknown_and_ambiguous_jobs(client, make_batch):
    response = client.get("/api/v1/jobs/123", params={"cluster": "c1"})
    assert response.status_code == 404
    assert response.json() == {"detail": "job 123 not found on cluster c1"}
    assert client.get("/api/v1/jobs/123").json() == {"detail": "job 123 not found"}
    post_batch(client, make_batch(cluster="c1", jobs={"123": 1}))
    post_batch(client, make_batch(cluster="c2", jobs={"123": 1}))
    assert client.get("/api/v1/jobs/123").status_code == 409
    assert client.get("/api/v1/jobs/123", params={"cluster": "c2"}).json()["cluster"] == "c2"


@pytest.fixture
def many_jobs(client, make_batch):
    """Eight jobs over two clusters, users and states, one hour apart; energy for each."""
    specs = []
    for i in range(8):
        spec = {
            "job_id": str(1000 + i), "cluster": "c1" if i < 6 else "c2",
            "user": "alice" if i % 2 == 0 else "bob", "account": "phys" if i < 4 else "chem",
            "partition": "gpu", "state": "COMPLETED" if i % 3 else "FAILED",
            "start": T0 + timedelta(hours=i), "end": T0 + timedelta(hours=i, minutes=30),
        }
        specs.append(spec)
        post_event(client, cluster=spec["cluster"], job_id=spec["job_id"], event="start",
                   time=spec["start"], user=spec["user"], account=spec["account"],
                   partition="gpu")
        post_event(client, cluster=spec["cluster"], job_id=spec["job_id"], event="end",
                   time=spec["end"], state=spec["state"])
        post_batch(client, make_batch(cluster=spec["cluster"], node=f"n{i}",
                                      jobs={spec["job_id"]: 1}, power_w=10.0 * (i + 1),
                                      start=spec["start"]))
    return specs


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [job["job_id"] for job in response.json()["jobs"]]


def test_list_filters(client, many_jobs):
    def expect(**match):
        return [s["job_id"] for s in reversed(many_jobs)
                if all(s[k] == v for k, v in match.items())]

    assert ids(client.get("/api/v1/jobs")) == expect()
    assert ids(client.get("/api/v1/jobs", params={"cluster": "c2"})) == expect(cluster="c2")
    assert ids(client.get("/api/v1/jobs", params={"user": "bob"})) == expect(user="bob")
    assert ids(client.get("/api/v1/jobs", params={"account": "chem", "user": "alice"})) == \
        expect(account="chem", user="alice")
    assert ids(client.get("/api/v1/jobs", params={"state": "failed"})) == expect(state="FAILED")
    assert ids(client.get("/api/v1/jobs", params={"job_id": "1001, 1003,9999"})) == \
        ["1003", "1001"]
    # Window [T0+2h15m, T0+4h): jobs 1002 (ends 2h30m) and 1003; 1004 starts at 4h exactly.
    window = {"start": (T0 + timedelta(hours=2, minutes=15)).isoformat(),
              "end": str((T0 + timedelta(hours=4)).timestamp())}
    assert ids(client.get("/api/v1/jobs", params=window)) == ["1003", "1002"]
    bad = client.get("/api/v1/jobs", params={"start": "yesterday"})
    assert bad.status_code == 422 and "start" in bad.json()["detail"]


def test_list_pagination_and_shape(client, many_jobs):
    everything = client.get("/api/v1/jobs").json()
    assert everything["total"] == 8 and everything["limit"] == 100
    pages = []
    for offset in (0, 3, 6):
        page = client.get("/api/v1/jobs", params={"limit": 3, "offset": offset}).json()
        assert page["total"] == 8 and page["offset"] == offset
        pages += page["jobs"]
    assert pages == everything["jobs"]
    for job in everything["jobs"]:
        single = client.get(f"/api/v1/jobs/{job['job_id']}", params={"cluster": job["cluster"]})
        assert single.json() == job
    assert client.get("/api/v1/jobs", params={"limit": 10_001}).status_code == 422
    assert client.get("/api/v1/jobs", params={"offset": -1}).status_code == 422


def test_job_steps(client, make_batch):
    from jobenergy.core.schema import Batch

    data = make_batch(node="n1", jobs={"700": 1, "701": 1}, n_intervals=2).model_dump(mode="json")
    for interval in data["intervals"]:
        for sample in interval["jobs"]:
            if sample["job_id"] == "700":
                sample["step_cpu_us"] = {"10": 1, "0": 1, "extern": 1, "2": 1, "batch": 1}
    batch = Batch.model_validate(data)
    post_batch(client, batch)

    job = client.get("/api/v1/jobs/700").json()
    assert [s["step"] for s in job["steps"]] == ["batch", "extern", "0", "2", "10"]
    assert sum(s["energy_uj"] for s in job["steps"]) == job["energy_uj"] == shares([batch], "700")
    for step in job["steps"]:
        assert step["energy_uj"] == sum(step["by_component"].values())
        assert step["energy_kwh"] == pytest.approx(step["energy_uj"] / UJ_PER_KWH)
    components = {c for s in job["steps"] for c in s["by_component"]}
    assert components == {"cpu", "dram", "gpu"} == set(job["by_component"])
    # No step information at all: the whole job is the "outside any step" entry.
    other = client.get("/api/v1/jobs/701").json()
    assert [(s["step"], s["energy_uj"]) for s in other["steps"]] == [
        ("outside", other["energy_uj"])]

    listed = {j["job_id"]: j for j in client.get("/api/v1/jobs").json()["jobs"]}
    assert listed["700"]["steps"] == job["steps"]
    assert listed["701"]["steps"] == other["steps"]


def test_a_merged_interval_s_split_over_steps_is_stored_as_sent(client, make_batch):
    """An agent that merged samples of several busy steps sends the job's energy per
    component and step (step_uj): stored as sent, the rest of the job outside any step; a
    split giving the steps more than the job had is refused (422) and stores nothing."""
    from jobenergy.core.schema import Batch

    data = make_batch(node="n1", jobs={"800": 1}, n_intervals=2).model_dump(mode="json")
    sent: dict[tuple[str, str], int] = {}
    left_out_uj = 0  # 7 µJ of each interval and component in no step
    for k, interval in enumerate(data["intervals"]):
        have: dict[str, int] = {}
        for src in interval["sources"]:
            if "800" in src["jobs_uj"]:
                have[src["component"]] = have.get(src["component"], 0) + src["jobs_uj"]["800"]
        # Not what step_cpu_us would give (1:1): the agent's sums of its samples' splits.
        split = {c: {"batch": e // (3 + k), "0": e - e // (3 + k) - 7} for c, e in have.items()}
        left_out_uj += 7 * len(split)
        for sample in interval["jobs"]:
            sample["step_cpu_us"] = {"batch": 1, "0": 1}
            sample["step_uj"] = split
        for component, parts in split.items():
            for step, energy_uj in parts.items():
                sent[(step, component)] = sent.get((step, component), 0) + energy_uj
    post_batch(client, Batch.model_validate(data))
    job = client.get("/api/v1/jobs/800").json()
    stored = {(s["step"], c): e for s in job["steps"] for c, e in s["by_component"].items()
              if s["step"] != "outside"}
    assert stored == sent
    outside = next(s for s in job["steps"] if s["step"] == "outside")
    assert outside["energy_uj"] == job["energy_uj"] - sum(sent.values()) == left_out_uj > 0
    # Seven µJ too many for one component: the whole batch is refused, nothing stored.
    bad = make_batch(node="n2", jobs={"801": 1}, n_intervals=1).model_dump(mode="json")
    interval = bad["intervals"][0]
    cpu_uj = sum(s["jobs_uj"].get("801", 0) for s in interval["sources"]
                 if s["component"] == "cpu")
    interval["jobs"][0]["step_cpu_us"] = {"batch": 5, "0": 5}
    interval["jobs"][0]["step_uj"] = {"cpu": {"batch": cpu_uj, "0": 7}}
    response = client.post("/api/v1/batches", json=bad)
    assert response.status_code == 422
    assert "more than the job's" in response.text
    # Steps the sample does not list, a step without CPU time given energy, and the view's
    # own "outside" are refused the same way.
    interval["jobs"][0]["step_cpu_us"] = {"batch": 5, "0": 0}
    for split, why in (({"cpu": {"7": 1}}, "no CPU time listed"),
                       ({"cpu": {"0": 1}}, "used no CPU time"),
                       ({"cpu": {"outside": 0}}, "is not a Slurm step")):
        interval["jobs"][0]["step_uj"] = split
        response = client.post("/api/v1/batches", json=bad)
        assert response.status_code == 422 and why in response.text, response.text
    interval["jobs"][0]["step_uj"] = None
    interval["jobs"][0]["step_cpu_us"] = {"outside": 5}
    response = client.post("/api/v1/batches", json=bad)
    assert response.status_code == 422 and "is not a Slurm step" in response.text
    assert client.get("/api/v1/jobs/801").status_code == 404
    assert client.get("/api/v1/jobs/800").json() == job


def test_sacct_list_filters(client, many_jobs):
    """sacct's comma lists (or repeated parameters), state codes, job names, node lists and
    uids select jobs; bad values and over-long lists are a 422 naming the parameter."""
    def get(params):
        return client.get("/api/v1/jobs", params=params)

    def expect(pick):
        return [s["job_id"] for s in reversed(many_jobs) if pick(s)]

    everything = expect(lambda s: True)
    assert ids(get({"user": "alice,bob"})) == everything
    assert ids(get([("user", "alice"), ("user", "bob")])) == everything
    assert ids(get({"cluster": "c1,c2"})) == everything
    assert ids(get({"account": "chem", "cluster": "c2,c9"})) == expect(
        lambda s: s["account"] == "chem" and s["cluster"] == "c2")
    assert ids(get({"state": "F"})) == expect(lambda s: s["state"] == "FAILED")
    assert ids(get([("state", "cd"), ("state", "failed,TO")])) == everything
    # Node lists (hostlist expressions): the nodes the agents saw the job on (job_node) and
    # Slurm's node list of the job.
    assert ids(get({"nodelist": "n[1-2],n7"})) == ["1007", "1002", "1001"]
    post_event(client, job_id="1005", event="start", time=many_jobs[5]["start"],
               nodes=["gpu9"], name="a,b", uid=4242)
    post_event(client, job_id="1003", event="start", time=many_jobs[3]["start"], name="train")
    assert ids(get({"nodelist": "gpu[8-9]"})) == ["1005"]
    assert ids(get({"name": "a,b"})) == ["1005"]  # names are never split: they may hold commas
    assert ids(get([("name", "train"), ("name", "a,b")])) == ["1005", "1003"]
    assert ids(get({"user": "4242"})) == ["1005"]  # all digits: a uid too

    for params, words in (
        ({"state": "CD,XX"}, ["state", "'XX'", "CD COMPLETED", "TO TIMEOUT"]),
        ({"user": ",".join(f"u{i}" for i in range(1001))}, ["user", "at most 1000"]),
        ({"nodelist": "n[1-"}, ["nodelist", "not a node list"]),
        ({"nodelist": "n[1-2000]"}, ["nodelist", "more than 1000"]),
        ({"job_id": "12 34"}, ["job_id", "invalid job id"]),
        ({"job_id": "5_[1-20000]"}, ["job_id"]),
        ({"start": "now-1fortnight"}, ["start", "now[{+|-}count"]),
    ):
        response = get(params)
        assert response.status_code == 422, response.text
        for word in words:
            assert word in response.json()["detail"], (params, response.text)
    # sacct's time forms, and epoch seconds as before.
    assert ids(get({"start": "now-20000days"})) == everything


def test_job_ids_select_array_tasks_het_components_and_steps_like_sacct(client):
    """Array 40 (tasks 0, 1, 2: raw ids 41, 42, 40), het job 50 (components 0, 1: raw 50, 51),
    job 60: ``-j`` forms select as sacct's do, and each job says its sacct id."""
    shapes = {"41": {"array_job_id": "40", "array_task_id": "0"},
              "42": {"array_job_id": "40", "array_task_id": "1"},
              "40": {"array_job_id": "40", "array_task_id": "2"},
              "50": {"het_job_id": "50", "het_job_offset": "0"},
              "51": {"het_job_id": "50", "het_job_offset": "1"},
              "60": {}}
    for i, (job_id, tags) in enumerate(shapes.items()):
        post_event(client, job_id=job_id, event="start", time=T0 + timedelta(minutes=i),
                   tags=tags)

    def selected(job_id):
        return sorted(ids(client.get("/api/v1/jobs", params={"job_id": job_id})), key=int)

    assert selected("40") == ["40", "41", "42"]  # the array: every task
    assert selected("41") == ["41"]  # a task's raw id: that task
    assert selected("40_1") == ["42"]
    assert selected("40_[0-1]") == ["41", "42"]
    assert selected("50") == ["50", "51"]  # the het leader: every component
    assert selected("51") == ["51"]
    assert selected("50+1") == ["51"]
    assert selected("60.batch,40_2.extern") == ["40", "60"]  # a step: its job
    assert selected("40_7,99") == []
    listed = {j["job_id"]: j for j in client.get("/api/v1/jobs").json()["jobs"]}
    assert {k: v["sacct_job_id"] for k, v in listed.items()} == {
        "41": "40_0", "42": "40_1", "40": "40_2", "50": "50+0", "51": "50+1", "60": "60"}
    assert (listed["42"]["array_job_id"], listed["42"]["array_task_id"]) == ("40", 1)
    assert (listed["51"]["het_job_id"], listed["51"]["het_job_offset"]) == ("50", 1)


def test_what_the_sync_knows_is_in_the_job(client):
    """AllocTRES, who cancelled the job and its steps (from sacct) come back as they went in."""
    steps = [{"id": "batch", "name": "batch"}, {"id": "extern", "name": "extern"},
             {"id": "0", "name": "hostname"}]
    post_event(client, job_id="70", event="end", time=T0, source="sacct", state="CANCELLED",
               alloc_tres="billing=1,cpu=1,gres/gpu=1,mem=500M,node=1", kill_requid=0,
               steps=steps)
    job = client.get("/api/v1/jobs/70").json()
    assert job["alloc_tres"] == "billing=1,cpu=1,gres/gpu=1,mem=500M,node=1"
    assert (job["state"], job["kill_requid"]) == ("CANCELLED", 0)
    assert job["slurm_steps"] == [{"step": s["id"], "name": s["name"]} for s in steps]
    assert client.get("/api/v1/jobs").json()["jobs"][0]["slurm_steps"] == job["slurm_steps"]
