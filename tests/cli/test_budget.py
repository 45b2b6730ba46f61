"""``jobenergy budget set|list|delete|write-state`` and ``senergy budget`` against a real
server over HTTP; the written state file is then read by the real submit script (Lua 5.1)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobenergy.cli.main import app

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
RANGE = ["--period", "range", "--start", "2026-11-23", "--end", "2030-01-01"]
SCRIPT = Path(__file__).resolve().parents[2] / "slurm_plugins" / "job_submit.lua"


@pytest.fixture
def api(tmp_path, make_batch):
    """Serve create_app over HTTP on 127.0.0.1 (no auth) with job 1 of alice in physics,
    1 kWh of IT energy at PUE 1.5; yield its URL."""
    import httpx
    import uvicorn

    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings

    settings = ServerSettings(auth="none", db_url=f"sqlite:///{tmp_path / 'b.db'}", pue=1.5)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    httpx.post(f"{url}/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "1", "event": "start", "time": T0.isoformat(),
        "user": "alice", "account": "physics"}, timeout=60).raise_for_status()
    batch = make_batch(jobs={"1": 1}, unattributed_weight=0, sources=(("cpu", "package-0"),),
                       power_w=1000.0, interval_s=3600.0, n_intervals=1)
    httpx.post(f"{url}/api/v1/batches", content=batch.model_dump_json(),
               timeout=60).raise_for_status()
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def budget(*args: str):
    return CliRunner().invoke(app, ["budget", *args])


def test_set_list_write_state_delete(api, tmp_path):
    out = budget("set", "--url", api, "--cluster", "c1", "--account", "physics",
                 "--limit", "1.2kWh", *RANGE)
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == ("budget 1 created: c1: account physics 1.2 kWh per range, "
                                  "deny at submission")
    out = budget("set", "--url", api, "--cluster", "c1", "--user", "alice", "--limit", "2kWh",
                 "--policy", "warn", *RANGE)
    assert out.exit_code == 0, out.output
    listed = budget("list", "--url", api)
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:6] == ["ID", "Cluster", "Account", "User", "Period", "Used"]
    assert lines[1].split()[:8] == ["1", "c1", "physics", "-", "range", "1.500", "1.200",
                                    "0.000"]  # 1 kWh × PUE 1.5
    state = tmp_path / "budget.state"
    out = budget("write-state", "--url", api, "--out", str(state))
    assert out.exit_code == 0, out.output
    assert state.read_text().splitlines()[2:4] == [
        "budget account physics - deny kWh 1.500000 1.200000 1893456000 1 range",
        "budget user - alice warn kWh 1.500000 2.000000 1893456000 2 range"]
    if shutil.which("lua5.1"):
        assert _submit(tmp_path, state, "alice", "physics") == ("-1", "job refused")
        assert _submit(tmp_path, state, "alice", "chem") == ("0", "")
    out = budget("delete", "--url", api, "1")
    assert out.exit_code == 0 and "budget 1 deleted" in out.stdout, out.output
    assert budget("delete", "--url", api, "1").exit_code == 1


def _submit(tmp_path: Path, state: Path, user: str, account: str) -> tuple[str, str]:
    script = tmp_path / "job_submit.lua"
    script.write_text(SCRIPT.read_text().replace("/var/lib/jobenergy/budget.state", str(state)))
    driver = (
        "local out = {}\n"
        "slurm = {SUCCESS = 0, ERROR = -1, log_info = function() end,"
        " log_error = function() end, log_debug = function() end,"
        " log_user = function(f, m) out[#out + 1] = m end}\n"
        f"dofile('{script}')\n"
        f"local rc = slurm_job_submit({{user_name = '{user}', account = '{account}'}}, {{}}, 1)\n"
        "local said = out[1] or ''\n"
        "print(rc) print(said:find('job refused') and 'job refused' or '')\n")
    out = subprocess.run(["lua5.1", "-e", driver], capture_output=True, text=True, check=True)
    rc, said = out.stdout.splitlines()
    return rc, said


@pytest.mark.parametrize("args, message", [
    (["--user", "al", "--limit", "3kW", "--period", "day"], "unknown unit 'kW'"),
    (["--user", "al", "--limit", "3kWh", "--period", "fortnight"], "--period 'fortnight'"),
    (["--limit", "3kWh", "--period", "day"], "give --user, --account, or both"),
    (["--user", "a b", "--limit", "3kWh", "--period", "day"], "not a Slurm name"),
    (["--user", "al", "--limit", "3kWh", "--period", "range"], "needs --start and --end"),
    (["--user", "al", "--limit", "3kWh", "--period", "range", "--start", "2027-01-01T00:30",
      "--end", "2027-02-01"], "whole UTC hour"),
    (["--user", "al", "--limit", "3kWh", "--period", "day", "--start", "soon"], "--start"),
    (["--user", "al", "--limit", "3kWh", "--period", "day", "--policy", "block"], "--policy"),
])
def test_bad_input_is_one_line_without_a_traceback(api, args, message):
    out = budget("set", "--url", api, "--cluster", "c1", *args)
    assert out.exit_code == 2, out.output
    assert out.stderr.startswith("jobenergy budget: ") and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.output


def test_unknown_budget_and_no_url_are_one_line(api, monkeypatch):
    monkeypatch.delenv("JOBENERGY_URL", raising=False)
    out = budget("delete", "--url", api, "42")
    assert out.exit_code == 1 and out.stderr.strip() == "jobenergy budget: 404: no budget 42"
    out = budget("list")
    assert out.exit_code == 2 and "no API URL" in out.stderr


def test_write_state_into_a_missing_folder_is_one_line(api, tmp_path):
    out = budget("write-state", "--url", api, "--out", str(tmp_path / "nope" / "state"))
    assert out.exit_code == 1 and "cannot write the budget state" in out.stderr, out.output
    assert len(out.stderr.strip().splitlines()) == 1


def test_senergy_budget_shows_used_remaining_and_projection(api):
    import contextlib
    import io

    from jobenergy.cli.senergy import main

    assert budget("set", "--url", api, "--cluster", "c1", "--user", "alice", "--limit",
                  "1kWh", *RANGE).exit_code == 0
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        with pytest.raises(SystemExit) as end:
            main(["--url", api, "budget"])
    assert end.value.code in (0, None)
    header, row = stdout.getvalue().splitlines()
    assert "Projected" in header and "Remaining" in header
    assert row.split()[:9] == ["1", "c1", "-", "alice", "range", "1.500", "1.000", "0.000",
                               "kWh"]
    assert "budget 1 is used up" in stderr.getvalue()
    assert "at the current rate" in stderr.getvalue()
