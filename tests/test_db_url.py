"""The database URL (it may hold a password) never needs to be in argv, nor shows in output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _jobenergy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "jobenergy.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_db_url_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from_env = tmp_path / "env.db"
    proc = _jobenergy("db", "upgrade", env={"JOBENERGY_SERVER_DB_URL": f"sqlite:///{from_env}"})
    assert proc.returncode == 0, proc.stderr
    assert from_env.exists()
    from_file = tmp_path / "file.db"
    url_file = tmp_path / "db.url"
    url_file.write_text(f"sqlite:///{from_file}\n")
    proc = _jobenergy("db", "upgrade", "--db-file", str(url_file))
    assert proc.returncode == 0, proc.stderr
    assert from_file.exists()
    empty = tmp_path / "empty.url"
    empty.write_text("")
    proc = _jobenergy("db", "upgrade", "--db-file", str(empty))
    assert proc.returncode == 2 and "holds no database URL" in proc.stderr


def test_a_password_is_never_printed(tmp_path: Path) -> None:
    secret = "s3cr3t-pw"
    proc = _jobenergy("db", "upgrade", env={
        "JOBENERGY_SERVER_DB_URL": f"postgresql+psycopg://u:{secret}@127.0.0.1:9/x"})
    assert proc.returncode == 2
    assert secret not in proc.stdout + proc.stderr and "***" in proc.stderr


def test_db_commands_use_the_server_config(tmp_path: Path) -> None:
    """``db upgrade``/``db maintain`` act on the database the server's config names (as
    ``jobenergy server --config`` does), not on an embedded default in the working folder."""
    db_path = tmp_path / "from-config.db"
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndb_url = "sqlite:///{db_path}"\n')
    for command in ("upgrade", "maintain"):
        proc = subprocess.run(
            [sys.executable, "-m", "jobenergy.cli.main", "db", command, "--config", str(config)],
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert db_path.exists() and not (tmp_path / "jobenergy.db").exists()
    config.write_text("[server]\ndb_url = 42\n")
    proc = _jobenergy("db", "upgrade", "--config", str(config))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "db_url" in proc.stderr
