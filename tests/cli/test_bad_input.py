"""Bad input to the commands: a short message and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment minus jobenergy's own, and an agent that could harm nothing here if
    it ever started (its folders in tmp_path, no socket, no NVML, nothing to send to)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOBENERGY_", "SENERGY_", "JOURNAL_STREAM"))}
    return {**env, "JOBENERGY_AGENT_SPOOL_DIR": str(tmp_path / "spool"),
            "JOBENERGY_AGENT_GPU_MAP_DIR": str(tmp_path / "gpus"),
            "JOBENERGY_AGENT_ANNOTATION_SOCKET": "", "JOBENERGY_AGENT_NVML": "off",
            "JOBENERGY_AGENT_AUTH": "none",
            "JOBENERGY_AGENT_COLLECTOR_URL": "http://127.0.0.1:9",
            "JOBENERGY_SERVER_CONFIG": str(tmp_path / "empty-server.toml"),
            "JOBENERGY_CONFIG": str(tmp_path / "absent-client.toml")}


FILES = {
    "empty-server.toml": b"[server]\n",
    "bad.toml": b"[agent\nnode = 1\n",
    "unknown-agent.toml": b"[agent]\nnode = \"n1\"\nbogus = 1\n",
    "no-table.toml": b"x = 1\n",
    "binary.toml": b"\xff\xfe\x00",
    "bad-server.toml": b"[server\n",
    "unknown-server.toml": b"[server]\nbogus = 1\n",
    "bad-port.toml": b"[server]\nport = \"eighty\"\n",
}

#: (arguments, words the message must hold). "@" marks a file of FILES.
ONE_LINE = [
    (["agent", "--log-level", "verbose"], "log_level"),
    (["agent", "--log-format", "xml"], "log_format"),
    (["agent", "--config", "/nonexistent/agent.toml"], "No such file"),
    (["agent", "--config", "@bad.toml"], "not valid TOML"),
    (["agent", "--config", "@unknown-agent.toml"], "bogus: unknown setting"),
    (["agent", "--config", "@no-table.toml"], "no [agent] table"),
    (["agent", "--node", "bad name!"], "node"),
    (["server", "--log-level", "verbose"], "log_level"),
    (["server", "--config", "/nonexistent/server.toml"], "No such file"),
    (["server", "--config", "@bad-server.toml"], "bad-server.toml"),
    (["server", "--config", "@unknown-server.toml"], "bogus: unknown setting"),
    (["server", "--config", "@no-table.toml"], "no [server] table"),
    (["server", "--config", "@bad-port.toml"], "port"),
    (["server", "--config", "@binary.toml"], "binary.toml"),
    (["server", "--db", "bogus://x", "--auth", "none"], "database URL"),
    (["server", "--port", "70000", "--auth", "none"], "port"),
    (["server", "--auth", "kerberos"], "auth"),
    (["server", "--host", "0.0.0.0", "--auth", "none"], "plain HTTP"),
    (["server", "--db-file", "/nonexistent/db.url"], "No such file"),
    (["db", "upgrade", "--db", "bogus://x"], "Can't load plugin"),
    (["db", "upgrade", "--log-level", "loud", "--db", "sqlite://"], "log level 'loud'"),
    (["db", "maintain", "--db", "bogus://x"], "Can't load plugin"),
    (["slurm", "sync", "--url", "http://127.0.0.1:9", "--log-level", "x"], "log level 'x'"),
    (["cluster", "show", "--url", "notaurl"], "http://"),
    (["demo", "--workdir", "/proc/self/nope"], "nope"),
]

#: Refused by the option parser: click's short usage (a few lines, no traceback) is fine.
USAGE = [
    ["server", "--port", "eighty"],
    ["db", "maintain", "--months-ahead", "-1"],
    ["demo", "--port", "70000"],
    ["cluster", "set-pue", "c1", "abc", "--url", "http://127.0.0.1:9"],
    ["nosuchcommand"],
]


def _run(tmp_path: Path, program: str, args: list[str]) -> subprocess.CompletedProcess:
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    args = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]
    return subprocess.run([sys.executable, "-m", f"jobenergy.cli.{program}", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path, env=_env(tmp_path))


@pytest.mark.parametrize(("args", "words"), ONE_LINE, ids=[" ".join(a) for a, _ in ONE_LINE])
def test_one_line_and_a_failure(tmp_path: Path, args: list[str], words: str) -> None:
    proc = _run(tmp_path, "main", args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jobenergy") and words in lines[0], lines[0]
    assert not (tmp_path / "spool").exists()  # no agent ever started


@pytest.mark.parametrize("args", USAGE, ids=[" ".join(a) for a in USAGE])
def test_option_errors_are_a_short_usage(tmp_path: Path, args: list[str]) -> None:
    proc = _run(tmp_path, "main", args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Usage: ") and len(proc.stderr.splitlines()) <= 12


@pytest.mark.parametrize("width", ["abc", "²", "٣", "", "-", "0", "99999999999999999999"])
def test_bad_widths(width: str) -> None:
    """Only ASCII digits: "²" passes str.isdigit() and then fails int()."""
    from jobenergy.cli.report import parse_fields

    with pytest.raises(ValueError, match=r"^invalid width in 'JobID%.*': use JobID%N or "):
        parse_fields(f"JobID%{width}")


def test_senergy_bad_width(tmp_path: Path) -> None:
    proc = _run(tmp_path, "senergy", ["--url", "http://127.0.0.1:9", "-o", "JobID%²"])
    assert proc.returncode != 0
    assert proc.stderr == "senergy: invalid width in 'JobID%²': use JobID%N or JobID%-N\n"


def test_server_on_a_port_in_use(tmp_path: Path) -> None:
    """Found only when listening, after startup: logged as one error line, exit non-zero."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = _run(tmp_path, "main", ["server", "--auth", "none", "--port", port, "--db",
                                       f"sqlite:///{tmp_path / 'j.db'}"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "address already in use" in errors[0], proc.stderr
