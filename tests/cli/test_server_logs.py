"""The server's log: every line through core/logs.py, no line per request unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from jobenergy.sim.processes import free_port, start_server, stop


def _serve(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """Start a server, make requests, stop it; return its log lines."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    proc = start_server(f"sqlite:///{tmp_path / 'j.db'}", port, log, "--log-level", "info",
                        *extra)
    try:
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs", timeout=10).is_success
    finally:
        assert stop(proc) in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    return log.read_text().splitlines()


def test_journal_lines_and_no_access_log_by_default(tmp_path: Path) -> None:
    lines = _serve(tmp_path, "journal", "--log-format", "journal")
    assert lines, "the server logged nothing at info"
    assert all(line[:3] in ("<6>", "<4>") for line in lines), lines  # uvicorn's too
    assert any(line.startswith("<6>uvicorn.error: Uvicorn running on") for line in lines)
    assert not [line for line in lines if "/api/v1/jobs" in line]


def test_access_log_on_request(tmp_path: Path) -> None:
    lines = _serve(tmp_path, "json", "--log-format", "json", "--access-log")
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    jobs = [r for r in access if '"GET /api/v1/jobs HTTP/1.1" 200' in r["message"]]
    assert len(jobs) == 3 and all(r["level"] == "info" for r in access)
