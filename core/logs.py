"""Log output of the daemons and commands: one line per event, as text, journald or JSON.

Formats (``--log-format``; ``log_format`` in the agent's and the server's settings):

- ``text``: ``2026-11-23T12:00:00.123+01:00 WARNING jobenergy.agent.pusher: message``.
- ``journal``: ``<4>jobenergy.agent.pusher: message``: the priority prefix of sd-daemon(3),
  which systemd-journald reads off a service's stderr (``<3>`` error, ``<4>`` warning,
  ``<6>`` info, ``<7>`` debug), and no timestamp (the journal stamps each entry itself).
- ``json``: one object per line: ``time`` (UTC), ``level``, ``logger``, ``message``, the
  record's extra fields, and ``exception`` when there is one.
- ``auto`` (the default): ``journal`` when stderr is the journal, else ``text``. systemd
  sets ``$JOURNAL_STREAM`` to the ``device:inode`` of the stream it connected (systemd.exec(5));
  a child whose stderr was redirected elsewhere inherits the variable, so it only counts when
  it names stderr itself.

An exception is one line, ``message: Type: text``; the traceback is added only at debug level
(each of its lines prefixed in ``journal``, so the journal files them under the right priority).
Other newlines in a message are escaped: a message can never forge a second entry.

Handlers are installed only by CLI entry points (:func:`configure`); library code just logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from jobenergy.core.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "text", "journal", "json")

#: syslog(3) priorities (LOG_CRIT 2, LOG_ERR 3, LOG_WARNING 4, LOG_INFO 6, LOG_DEBUG 7).
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

#: Loggers that say one line per request or per plugin at INFO: quiet unless debugging.
#: httpx logs every HTTP request it makes (one per push of the agent).
NOISY_LOGGERS = ("httpx", "httpcore", "alembic")

#: Attributes every LogRecord has; any other is an ``extra=`` field (shown in JSON).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def lower_name(value: Any) -> Any:
    """Return a name stripped and lower case (a level or format as given); other values as is."""
    return value.strip().lower() if isinstance(value, str) else value


def check_level(value: str) -> str:
    """Return a log level name, lower case.

    Raises:
        ConfigError: Not one of debug, info, warning, error, critical.
    """
    name = lower_name(value)
    if name not in LEVELS:
        raise ConfigError(f"log level {value!r}: use one of {', '.join(LEVELS)}")
    return name


def check_format(value: str) -> str:
    """Return a log format name, lower case.

    Raises:
        ConfigError: Not one of auto, text, journal, json.
    """
    name = lower_name(value)
    if name not in FORMATS:
        raise ConfigError(f"log format {value!r}: use one of {', '.join(FORMATS)}")
    return name


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Return True when ``stream`` is the journal stream systemd connected
    (``$JOURNAL_STREAM`` is its ``device:inode``)."""
    expected = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's capture)
        return False
    return expected.strip() == f"{st.st_dev}:{st.st_ino}"


def resolve_format(fmt: str, stream: TextIO) -> str:
    """Return the format to write to ``stream`` with: ``auto`` resolved."""
    fmt = check_format(fmt)
    if fmt == "auto":
        return "journal" if stream_is_journal(stream) else "text"
    return fmt


def _escape(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _exception_line(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    detail = _escape(str(exc).strip())
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class LineFormatter(logging.Formatter):
    """Format records as one line each, in one of ``text``, ``journal`` or ``json``."""

    def __init__(self, fmt: Literal["text", "journal", "json"], tracebacks: bool = False) -> None:
        """Set the format.

        Args:
            fmt: The output format (``auto`` resolved already).
            tracebacks: Add the traceback of exceptions (debug level).
        """
        super().__init__()
        self.kind = fmt
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line (plus a traceback when ``tracebacks``)."""
        message = _escape(record.getMessage())
        exc = record.exc_info[1] if record.exc_info else None
        trace = ""
        if record.exc_info and self.tracebacks:
            trace = self.formatException(record.exc_info)
        if record.stack_info and self.tracebacks:
            trace = "\n".join(filter(None, (trace, self.formatStack(record.stack_info))))
        if self.kind == "json":
            return self._json(record, message, exc, trace)
        if exc is not None:
            message = f"{message}: {_exception_line(exc)}"
        if self.kind == "journal":
            prefix = f"<{priority(record.levelno)}>"
            lines = [f"{record.name}: {message}", *trace.splitlines()]
            return "\n".join(prefix + line for line in lines)
        when = datetime.fromtimestamp(record.created).astimezone()
        line = (f"{when.isoformat(timespec='milliseconds')} {record.levelname} "
                f"{record.name}: {message}")
        return f"{line}\n{trace}" if trace else line

    def _json(self, record: logging.LogRecord, message: str, exc: BaseException | None,
              trace: str) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value
        if exc is not None:
            out["exception"] = _exception_line(exc)
        if trace:
            out["traceback"] = trace
        return json.dumps(out, default=str, ensure_ascii=False)


def priority(levelno: int) -> int:
    """Return the syslog priority of a logging level (7, debug, below INFO)."""
    for threshold, value in _PRIORITY:
        if levelno >= threshold:
            return value
    return 7


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (so that a second call replaces it)."""


class _StderrHandler(_Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (as ``logging.lastResort``
    does): a command run in-process by a test, with stderr swapped and closed after it,
    leaves no handler on a closed stream behind."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        """Return the current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log record of ``level`` and above to stderr in format ``fmt``.

    For CLI entry points only. Calling it again replaces what an earlier call installed
    (a command configures logging early, then again from its settings), and leaves any other
    handler alone.

    Raises:
        ConfigError: Unknown level or format.
    """
    levelno = getattr(logging, check_level(level).upper())
    target = sys.stderr if stream is None else stream
    handler = _StderrHandler() if stream is None else _Handler(stream)
    handler.setFormatter(LineFormatter(resolve_format(fmt, target),  # type: ignore[arg-type]
                                       tracebacks=levelno <= logging.DEBUG))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(levelno if levelno <= logging.DEBUG
                                         else max(levelno, logging.WARNING))
