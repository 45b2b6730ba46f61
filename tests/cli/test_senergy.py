"""``senergy`` as sacct: ids of array tasks and het components, step rows, comma lists, state
codes, node lists, clusters, AllocTRES and units, against a real server over HTTP.

The jobs are described as the hooks and the Slurm sync describe them (``source = "sacct"``
events with the steps and AllocTRES text sacct prints), with step CPU time in the batches.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
WINDOW = ("-S", "2026-11-01", "-E", "2026-12-01")

#: raw id → (cluster, user, account, name, nodes, state, tags, Slurm's steps, step CPU time)
JOBS: dict[str, tuple[Any, ...]] = {
    "41": ("c1", "alice", "phys", "arr", ["n1"], "COMPLETED",
           {"array_job_id": "40", "array_task_id": "0"}, ["batch", "extern"],
           {"batch": 3, "extern": 1}),
    "40": ("c1", "alice", "phys", "arr", ["n1"], "COMPLETED",
           {"array_job_id": "40", "array_task_id": "2"}, ["batch", "extern"], {}),
    "50": ("c1", "bob", "chem", "het", ["n2"], "COMPLETED",
           {"het_job_id": "50", "het_job_offset": "0"}, ["batch", "extern", "0"],
           {"batch": 1, "0": 1}),
    "51": ("c1", "bob", "chem", "het", ["n3"], "COMPLETED",
           {"het_job_id": "50", "het_job_offset": "1"}, ["extern", "0"], {"0": 1}),
    "60": ("c1", "alice", "chem", "a,b", ["n4"], "FAILED", {}, [], {}),
    "61": ("c2", "carol", "phys", "other", ["m1"], "CANCELLED", {}, [], {}),
}
TRES = "billing=1,cpu=1,mem=500M,node=1"


@pytest.fixture
def api(tmp_path, make_batch, monkeypatch, _sqlite_template, no_credentials):
    """Serve create_app on 127.0.0.1 with :data:`JOBS`; yield its URL."""
    import httpx
    import uvicorn

    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings
    from jobenergy.core.schema import Batch

    monkeypatch.setenv("JOBENERGY_CONFIG", str(tmp_path / "no-such-file.toml"))
    monkeypatch.delenv("JOBENERGY_CLUSTER", raising=False)
    monkeypatch.delenv("SENERGY_FORMAT", raising=False)
    shutil.copyfile(_sqlite_template, tmp_path / "cli.db")  # migrated once per session
    app = create_app(ServerSettings(auth="none", db_url=f"sqlite:///{tmp_path / 'cli.db'}"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    with httpx.Client(base_url=url, timeout=30) as http:
        for i, (job_id, (cluster, user, account, name, nodes, state, tags, steps,
                         cpu)) in enumerate(JOBS.items()):
            common = {"cluster": cluster, "job_id": job_id, "user": user, "account": account,
                      "partition": "debug", "name": name, "nodes": nodes, "tags": tags,
                      "source": "sacct", "alloc_tres": TRES}
            http.post("/api/v1/jobs/events", json={
                **common, "event": "start", "time": (T0 + timedelta(minutes=i)).isoformat(),
            }).raise_for_status()
            data = make_batch(cluster=cluster, node=nodes[0], jobs={job_id: 1}, seq=i,
                              start=T0 + timedelta(minutes=i)).model_dump(mode="json")
            for interval in data["intervals"]:
                for sample in interval["jobs"]:
                    sample["step_cpu_us"] = cpu
            http.post("/api/v1/batches", content=Batch.model_validate(data).model_dump_json()
                      ).raise_for_status()
            http.post("/api/v1/jobs/events", json={
                **common, "event": "end", "state": state, "exit_code": "0:0",
                "time": (T0 + timedelta(minutes=i, seconds=30)).isoformat(),
                "steps": [{"id": s, "name": s} for s in steps],
                **({"kill_requid": 1000} if state == "CANCELLED" else {}),
            }).raise_for_status()
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def senergy(*args: str) -> tuple[int, str, str]:
    from jobenergy.cli.senergy import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as end:
            return int(end.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def table(api: str, *args: str, fields: str = "JobID") -> list[str]:
    """Rows of ``senergy -P -n -o fields args`` (which must succeed)."""
    code, out, err = senergy("--url", api, "-P", "-n", "-o", fields, *args)
    assert code == 0, out + err
    return out.strip().splitlines()


def test_array_and_het_ids_and_step_rows(api):
    assert table(api, "-j", "40", fields="JobID,JobIDRaw,JobName,User,State") == [
        "40_0|41|arr|alice|COMPLETED", "40_0.batch|41.batch|batch||",
        "40_0.extern|41.extern|extern||", "40_2|40|arr|alice|COMPLETED",
        "40_2.batch|40.batch|batch||", "40_2.extern|40.extern|extern||"]
    assert table(api, "-X", "-j", "40_2,50") == ["40_2", "50+0", "50+1"]
    assert table(api, "-j", "51") == ["50+1", "50+1.extern", "50+1.0"]
    assert table(api, "-j", "50+0.0,40_[0-2].batch") == ["40_0.batch", "40_2.batch", "50+0.0"]
    assert table(api, "-X", "-j", "41.batch") == ["40_0"]  # -X: the step's job


def test_step_energy_adds_up_and_unknown_stays_empty(api):
    import httpx

    jobs = {j["job_id"]: j for j in httpx.get(f"{api}/api/v1/jobs", timeout=60).json()["jobs"]}
    rows = table(api, "-j", "41,40", fields="JobID,EnergyUJ")
    energy = {r.split("|")[0]: r.split("|")[1] for r in rows}
    steps = {s["step"]: s["energy_uj"] for s in jobs["41"]["steps"]}
    assert energy["40_0"] == str(jobs["41"]["energy_uj"])
    assert (energy["40_0.batch"], energy["40_0.extern"]) == (str(steps["batch"]),
                                                             str(steps["extern"]))
    assert int(energy["40_0.batch"]) + int(energy["40_0.extern"]) == jobs["41"]["energy_uj"]
    # Job 40 had no step CPU time at all: its steps' energy is unknown, not 0.
    assert (energy["40_2.batch"], energy["40_2.extern"]) == ("", "")


def test_comma_lists_states_names_nodes_and_users(api):
    assert table(api, "-X", "-a", *WINDOW, "-s", "f,CD") == [
        "40_0", "40_2", "50+0", "50+1", "60"]
    assert table(api, "-X", "-a", *WINDOW, "-s", "CA", "-M", "c2") == ["61"]
    assert table(api, "-X", "-a", *WINDOW, "--name", "arr,het", "-A", "chem") == [
        "50+0", "50+1"]
    assert table(api, "-X", "-a", *WINDOW, "-N", "n[3-4]") == ["50+1", "60"]
    assert table(api, "-X", *WINDOW, "-u", "bob,carol", "-L") == ["50+0", "50+1", "61"]
    assert table(api, "-X", *WINDOW, "-u", "carol", "-M", "all") == ["61"]
    assert table(api, "-X", *WINDOW, "-u", "carol", "-M", "c1,c3") == []


def test_cluster_defaults_to_the_configured_one_as_sacct(api, monkeypatch):
    monkeypatch.setenv("JOBENERGY_CLUSTER", "c2")
    assert table(api, "-X", "-a", *WINDOW) == ["61"]
    assert table(api, "-X", "-a", *WINDOW, "-L") == ["40_0", "40_2", "50+0", "50+1", "60", "61"]
    assert table(api, "-X", "-a", *WINDOW, "-M", "all") == table(api, "-X", "-a", *WINDOW, "-L")


def test_alloc_tres_state_and_units(api):
    assert table(api, "-X", "-j", "61", "-M", "c2",
                 fields="JobID,State,AllocTRES%40,ConsumedEnergyRaw") == [
        f"61|CANCELLED by 1000|{TRES}|{_joules(api, '61', 'c2')}"]
    code, out, _ = senergy("--url", api, "-P", "-n", "-X", "-j", "60", "-o",
                           "ConsumedEnergy", "--units", "M")
    assert code == 0 and out.strip().endswith("M"), out
    code, out, _ = senergy("--url", api, "-P", "-n", "-X", "-j", "60", "-o",
                           "ConsumedEnergy", "--noconvert")
    assert code == 0 and out.strip() == _joules(api, "60", "c1"), out


def _joules(api: str, job_id: str, cluster: str) -> str:
    import httpx

    job = httpx.get(f"{api}/api/v1/jobs/{job_id}", params={"cluster": cluster}, timeout=60).json()
    return str(job["energy_uj"] // 1_000_000)


@pytest.mark.parametrize(("args", "words"), [
    (("-s", "CD,XX"), ["invalid state 'XX'", "CD COMPLETED"]),
    (("-j", "40_x"), ["invalid job id '40_x'"]),
    (("-j", "5_[1-"), ["invalid job id"]),
    (("--units", "Q"), ["invalid --units 'Q'", "K, M, G, T, P"]),
    (("-o", "JobID,Nope"), ["invalid field requested: 'Nope'"]),
])
def test_bad_arguments_are_one_line_and_exit_2(api, args, words):
    code, out, err = senergy("--url", api, *args)
    assert code == 2 and out == "", out
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_missing_jobs_are_named_in_sacct_form(api):
    code, out, err = senergy("--url", api, "-P", "-n", "-o", "JobID", "-j", "40_7,99.batch,41")
    assert code == 0 and out.split() == ["40_0", "40_0.batch", "40_0.extern"], out
    assert "no energy recorded for job 40_7" in err and "job 99.batch" in err
    assert "41" not in err
