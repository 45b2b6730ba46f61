"""Settings precedence of the daemons: option > environment > config file > default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _show(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBENERGY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "jobenergy.cli.main", "server", "--show-config", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**base, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_server_option_over_environment_over_file_over_default(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("[server]\n")
    config = tmp_path / "server.toml"
    config.write_text('[server]\ndb_url = "sqlite:///file.db"\nport = 8001\n'
                      'log_format = "json"\n')
    env = {"JOBENERGY_SERVER_DB_URL": "postgresql://u:secret@db/env",
           "JOBENERGY_SERVER_PORT": "8002", "JOBENERGY_SERVER_LOG_FORMAT": "Journal"}

    def picked(shown: dict) -> tuple:
        return shown["db_url"], shown["port"], shown["log_format"]

    assert picked(_show(tmp_path, "--config", str(empty))) == (
        "sqlite:///./jobenergy.db", 8080, "auto")
    assert picked(_show(tmp_path, "--config", str(config))) == ("sqlite:///file.db", 8001, "json")
    assert picked(_show(tmp_path, "--config", str(config), env=env)) == (
        "postgresql://u:***@db/env", 8002, "journal")  # the password never shown
    # The config file named by the environment, overridden by options.
    url_file = tmp_path / "db.url"
    url_file.write_text("sqlite:///from-db-file.db\n")
    assert picked(_show(tmp_path, "--db-file", str(url_file), "--port", "8003",
                        "--log-format", "text",
                        env={**env, "JOBENERGY_SERVER_CONFIG": str(config)})) == (
        "sqlite:///from-db-file.db", 8003, "text")
    assert picked(_show(tmp_path, "--db", "sqlite:///opt.db", env=env))[0] == "sqlite:///opt.db"


def test_agent_option_over_environment_over_file_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobenergy.agent.settings import AgentSettings

    for key in [k for k in os.environ if k.startswith("JOBENERGY_AGENT_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nnode = "n1"\ncollector_url = "http://file:1"\n'
                      'log_level = "WARNING"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text('[agent]\nnode = "n1"\n')

    def picked(path: Path, **cli: str) -> tuple:
        s = AgentSettings.load(path, **cli)
        return s.collector_url, s.log_level

    assert picked(empty) == ("http://127.0.0.1:8080", "info")
    assert picked(config) == ("http://file:1", "warning")
    monkeypatch.setenv("JOBENERGY_AGENT_COLLECTOR_URL", "http://env:2")
    monkeypatch.setenv("JOBENERGY_AGENT_LOG_LEVEL", "error")
    assert picked(config) == ("http://env:2", "error")
    assert picked(config, collector_url="http://cli:3", log_level="Debug") == (
        "http://cli:3", "debug")
