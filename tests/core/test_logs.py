"""Log output: one line per event as text, journald priorities or JSON (core/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobenergy.core import logs
from jobenergy.core.errors import ConfigError


def _record(level: int, msg: str, *args: object, exc: BaseException | None = None,
            **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("jobenergy.agent.pusher", level, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def _raised() -> ValueError:
    try:
        raise ValueError("bad\nthing")
    except ValueError as err:
        return err


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"),
    (logging.ERROR, "<3>"), (logging.CRITICAL, "<2>"),
])
def test_journal_lines_carry_the_syslog_priority_and_no_time(level: int, prefix: str) -> None:
    line = logs.LineFormatter("journal").format(_record(level, "push failed seq=%s", 7))
    assert line == f"{prefix}jobenergy.agent.pusher: push failed seq=7"


def test_one_line_per_event_whatever_the_message_or_exception() -> None:
    fmt = logs.LineFormatter("text")
    line = fmt.format(_record(logging.ERROR, "cannot push\n<3>forged", exc=_raised()))
    assert "\n" not in line
    assert line.endswith(" ERROR jobenergy.agent.pusher: cannot push\\n<3>forged: "
                         "ValueError: bad\\nthing")
    journal = logs.LineFormatter("journal").format(_record(logging.ERROR, "x", exc=_raised()))
    assert journal == "<3>jobenergy.agent.pusher: x: ValueError: bad\\nthing"


def test_tracebacks_only_when_debugging_each_journal_line_prefixed() -> None:
    lines = logs.LineFormatter("journal", tracebacks=True).format(
        _record(logging.ERROR, "failed", exc=_raised())).splitlines()
    assert lines[0] == "<3>jobenergy.agent.pusher: failed: ValueError: bad\\nthing"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines)


def test_json_lines_hold_time_level_logger_message_and_extras() -> None:
    fmt = logs.LineFormatter("json")
    record = _record(logging.WARNING, "refused seq=%s", 3, exc=_raised(), node="n1", seq=3)
    line = fmt.format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out.pop("time").endswith("Z")
    assert out == {"level": "warning", "logger": "jobenergy.agent.pusher",
                   "message": "refused seq=3", "node": "n1", "seq": 3,
                   "exception": "ValueError: bad\\nthing"}


def test_levels_and_formats_are_checked_case_insensitively() -> None:
    assert logs.check_level("WARNING") == "warning"
    assert logs.check_format(" Journal ") == "journal"
    with pytest.raises(ConfigError, match="log level 'verbose': use one of debug, info, "
                                          "warning, error, critical"):
        logs.check_level("verbose")
    with pytest.raises(ConfigError, match="log format 'xml'"):
        logs.check_format("xml")


def test_the_journal_is_recognised_by_the_stream_it_connected(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.stream_is_journal(stream, env)
        assert not logs.stream_is_journal(other, env)  # inherited, stderr elsewhere
        assert not logs.stream_is_journal(stream, {})
        assert not logs.stream_is_journal(io.StringIO(), env)


def test_configure_replaces_its_own_handler_and_quiets_per_request_loggers() -> None:
    """(tests/conftest.py restores the root logger afterwards.)"""
    first, second = io.StringIO(), io.StringIO()
    logs.configure("info", "text", stream=first)
    logs.configure("info", "json", stream=second)
    mine = [h for h in logging.getLogger().handlers if isinstance(h, logs._Handler)]
    assert len(mine) == 1
    logging.getLogger("httpx").info('HTTP Request: POST http://c/api/v1/batches "200 OK"')
    logging.getLogger("jobenergy.test").warning("kept")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["kept"]
    logs.configure("debug", "text", stream=second)
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG


def _db_upgrade(tmp_path: Path, *args: str, stderr: object = subprocess.PIPE,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobenergy.cli.main", "db", "upgrade", *args],
        env={**os.environ, "JOBENERGY_SERVER_DB_URL": f"sqlite:///{tmp_path / 'j.db'}",
             **(env or {})},
        stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120, check=False)


def test_commands_write_journal_lines_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """systemd's $JOURNAL_STREAM names stderr: priorities, no timestamps; asked for with
    --log-format journal too."""
    log = tmp_path / "stderr"
    with open(log, "w") as stream:
        st = os.fstat(stream.fileno())
        proc = _db_upgrade(tmp_path, stderr=stream,
                           env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert proc.returncode == 0
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("<6>") for line in lines), lines
    assert any("database migrated" in line for line in lines)
    asked = _db_upgrade(tmp_path, "--log-format", "journal")
    assert asked.returncode == 0
    assert asked.stderr == "<6>jobenergy.collector.db: database migrated revision=head\n"
    quiet = _db_upgrade(tmp_path, "--log-format", "journal", "--log-level", "WARNING")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    text = _db_upgrade(tmp_path, env={"JOURNAL_STREAM": "1:2"})  # inherited, stderr elsewhere
    assert text.returncode == 0 and not text.stderr.startswith("<")
