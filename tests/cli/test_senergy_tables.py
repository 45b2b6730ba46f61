"""``senergy leaderboard|summary`` and ``jobenergy cluster ...`` against a real server."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def api(tmp_path, make_batch, no_credentials):
    """Serve create_app over HTTP on 127.0.0.1 with two tagged jobs; yield its URL."""
    import httpx
    import uvicorn

    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings

    app = create_app(ServerSettings(auth="none", db_url=f"sqlite:///{tmp_path / 'cli.db'}"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    for i, (job_id, model) in enumerate((("1", "llama"), ("2", "bert"))):
        httpx.post(f"{url}/api/v1/jobs/events", json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": T0.isoformat(),
            "user": "alice", "comment": f"model={model} phase=training"},
            timeout=60).raise_for_status()
        batch = make_batch(jobs={job_id: 1}, node=f"n{i}", power_w=100.0 * (i + 1))
        httpx.post(f"{url}/api/v1/batches", content=batch.model_dump_json(),
                   timeout=60).raise_for_status()
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def senergy(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from jobenergy.cli.senergy import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(list(args))
        except SystemExit as end:
            return int(end.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_leaderboard_and_summary_tables(api):
    code, out = senergy("leaderboard", "--url", api, "-P")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == "Model|Phase|Jobs|TotalkWh|MediankWh|kWhPerGPUh|JPerSample|CO2eKg"
    assert [line.split("|")[0] for line in lines[1:]] == ["bert", "llama"]  # bert used more
    code, out = senergy("leaderboard", "--url", api, "--json", "--metric", "total_energy_kwh",
                        "--order", "asc")
    assert code == 0 and [r["model"] for r in json.loads(out)] == ["llama", "bert"]
    code, out = senergy("summary", "--url", api, "--group-by", "model")
    assert code == 0 and "Group" in out.splitlines()[0] and "bert" in out
    code, out = senergy("summary", "--url", api, "--json", "-g", "user")
    rows = json.loads(out)
    assert [(r["group"], r["jobs"]) for r in rows] == [("alice", 2)]


def test_report_without_subcommand_is_unchanged(api):
    code, out = senergy("--url", api, "-M", "c1", "-j", "1,2", "-o", "JobID,Model,Phase", "-P")
    assert code == 0, out
    assert out.strip().splitlines() == ["JobID|Model|Phase", "1|llama|training",
                                        "2|bert|training"]


def test_cluster_commands(api):
    from jobenergy.cli.cluster import cluster_app

    runner = CliRunner()
    result = runner.invoke(cluster_app, ["set-carbon", "c1", "--region", "FRA", "--year",
                                         "2023", "--url", api])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["carbon"]["source"] == "region"
    result = runner.invoke(cluster_app, ["set-pue", "c1", "1.4", "--url", api])
    assert result.exit_code == 0 and json.loads(result.output)["pue"]["value"] == 1.4
    code, out = senergy("--url", api, "-j", "1", "--json")
    job = json.loads(out)["jobs"][0]
    assert job["pue"] == 1.4 and round(job["carbon_intensity_g_per_kwh"]) == 55
    result = runner.invoke(cluster_app, ["set-carbon", "c1", "--region", "XXX", "--url", api])
    assert result.exit_code == 1 and "alpha-3" in result.output
    result = runner.invoke(cluster_app, ["show", "--url", api])
    assert result.exit_code == 0 and json.loads(result.output)[0]["cluster"] == "c1"


def senergy_err(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from jobenergy.cli.senergy import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as end:
            return int(end.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_report_marks_energy_not_final_and_unmeasured(api, make_batch):
    import httpx

    from jobenergy.core.units import UJ_PER_KWH

    # Job 1 ended before its node's last interval (final); job 2 still runs; job 3 ran only on
    # a node without counters.
    httpx.post(f"{api}/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "1", "event": "end",
        "time": "2026-11-23T10:00:20+00:00"}, timeout=60).raise_for_status()
    bare = make_batch(jobs={"3": 1}, node="bare", sources=())
    httpx.post(f"{api}/api/v1/batches", content=bare.model_dump_json(),
               timeout=60).raise_for_status()
    api_jobs = {j["job_id"]: j for j in httpx.get(f"{api}/api/v1/jobs", timeout=60).json()["jobs"]}
    assert [api_jobs[j]["final"] for j in ("1", "2", "3")] == [True, False, False]
    assert api_jobs["3"]["quality"]["unmeasured"] is True

    code, out, err = senergy_err("--url", api, "-M", "c1", "-j", "1,2,3", "-o",
                                 "JobID,EnergyUJ,TotalkWh,Final", "-P")
    assert code == 0, out + err
    uj = {j: api_jobs[j]["energy_uj"] for j in ("1", "2")}
    assert out.strip().splitlines() == [
        "JobID|EnergyUJ|TotalkWh|Final",
        f"1|{uj['1']}|{uj['1'] / UJ_PER_KWH:.6f}|yes",
        f"2|{uj['2']}|{uj['2'] / UJ_PER_KWH:.6f}|no",
        "3|unmeasured|unmeasured|no",
    ]
    assert "not final" in err and "unmeasured" in err

    code, out, err = senergy_err("--url", api, "-M", "c1", "-j", "1,2,3", "-o",
                                 "JobID,EnergyUJ,TotalkWh,User")
    assert code == 0, out + err
    rows = {line.split()[0]: line.split() for line in out.strip().splitlines()[2:]}
    assert rows["1"][1:3] == [str(uj["1"]), f"{uj['1'] / UJ_PER_KWH:.6f}"]
    assert rows["2"][1:3] == [f"{uj['2']}*", f"{uj['2'] / UJ_PER_KWH:.6f}*"]
    assert rows["3"][1:3] == ["unmeasured*", "unmeasured*"]
    assert err.startswith("* energy not final")

    # No energy field, nothing to explain; final jobs only: no footnote.
    assert senergy_err("--url", api, "-M", "c1", "-j", "2", "-o", "JobID,User")[2] == ""
    assert senergy_err("--url", api, "-M", "c1", "-j", "1", "-o", "JobID,TotalkWh")[2] == ""
    code, out, _ = senergy_err("--url", api, "-M", "c1", "-j", "3", "--json")
    job = json.loads(out)["jobs"][0]
    assert job["final"] is False and job["quality"]["unmeasured"] is True


def test_report_defaults_to_sacct_window_and_reads_sacct_times(api, monkeypatch):
    """Without -S (and -j) the window starts at 00:00 today, as sacct's; -S takes sacct's
    forms (MM/DD, now-Nunits, ...) and refuses anything else with a one-line error."""
    import httpx

    monkeypatch.setenv("JOBENERGY_TOKEN_FILE", "")
    httpx.post(f"{api}/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "1", "event": "end", "time": T0.isoformat(),
        "state": "COMPLETED"}, timeout=60).raise_for_status()
    code, out = senergy("--url", api, "-a", "-o", "JobID", "-P", "-n")
    assert code == 0 and out.split() == ["2"], out  # job 1 ended before today
    since = T0.astimezone().strftime("%m/%d/%y")
    code, out = senergy("--url", api, "-a", "-o", "JobID", "-P", "-n", "-S", since)
    assert code == 0 and out.split() == ["1", "2"], out
    code, out = senergy("--url", api, "-a", "-o", "JobID", "-P", "-n", "-S", "now-3650days")
    assert code == 0 and out.split() == ["1", "2"], out
    code, out = senergy("--url", api, "-j", "1", "-o", "JobID", "-P", "-n")
    assert code == 0 and out.split() == ["1"], out  # -j: no default window
    code, _out = senergy("--url", api, "-a", "-S", "nowgarbage")
    assert code == 2


def test_subcommands_after_the_url_and_in_the_help(api):
    code, out = senergy("--url", api, "leaderboard")
    assert code == 0 and "llama" in out and "bert" in out, out
    code, out = senergy(f"--url={api}", "summary", "--group-by", "user")
    assert code == 0 and "alice" in out, out
    code, out = senergy("--help")
    assert code == 0 and "senergy leaderboard" in out and "senergy summary" in out, out


def test_system_file_gives_url_and_cluster(api, tmp_path, monkeypatch):
    """Login-node users need no environment: /etc/jobenergy/jobenergy.toml (here
    $JOBENERGY_CONFIG) gives url and cluster; options and the environment win over it."""
    from jobenergy.cli.client_config import client_config

    config = tmp_path / "jobenergy.toml"
    config.write_text(f'url = "{api}"\ncluster = "nosuch"\nunrelated = 1\n')
    monkeypatch.setenv("JOBENERGY_CONFIG", str(config))
    monkeypatch.delenv("JOBENERGY_URL", raising=False)
    monkeypatch.delenv("JOBENERGY_CLUSTER", raising=False)
    client_config.cache_clear()
    try:
        code, out = senergy("-j", "1", "-o", "JobID", "-P", "-n")
        assert code == 0 and out.split() == [], out  # cluster "nosuch" from the file
        code, out = senergy("-j", "1", "-M", "c1", "-o", "JobID", "-P", "-n")
        assert code == 0 and out.split() == ["1"], out
        config.write_text("url = [broken\n")
        client_config.cache_clear()
        code, _out = senergy("-j", "1")
        assert code == 2
    finally:
        client_config.cache_clear()
