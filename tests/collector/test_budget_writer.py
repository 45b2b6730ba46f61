"""The server keeps the submit script's state file itself when ``budget_state_file`` is set."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from jobenergy.collector.settings import ServerSettings


def test_server_writes_the_state_file_in_the_background(db_url, tmp_path, make_client):
    state = tmp_path / "budget.state"
    settings = ServerSettings(db_url=db_url, auth="none", migrate=False,
                              budget_state_file=state, budget_state_interval_s=0.05,
                              budget_state_cluster="c1")
    client = make_client(settings)
    for cluster in ("c1", "c2"):
        r = client.put("/api/v1/budgets", json={
            "cluster": cluster, "scope": "account", "account": "physics", "period": "month",
            "limit": "2kWh"})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while not (state.exists() and "budget" in state.read_text().split("\n", 2)[-1]):
        assert time.monotonic() < deadline, "the state file was never written with the budget"
        time.sleep(0.02)
    lines = state.read_text().splitlines()
    assert lines[0] == "# jobenergy budget state v1"
    generated = int(lines[1].split()[1])
    assert abs(generated - datetime.now(UTC).timestamp()) < 60
    assert [line.split()[:8] for line in lines[2:]] == [
        ["budget", "account", "physics", "-", "deny", "kWh", "0.000000", "2.000000"]]
    assert oct(state.stat().st_mode & 0o777) == "0o644"
