"""Read the agent's settings in a short-lived child, so the daemon never imports pydantic-settings.

``AgentSettings`` (``agent/settings.py``) is the one definition of the agent's keys, defaults
and checks. Importing pydantic-settings, though, also imports asyncio (and ssl through it),
python-dotenv, argparse, email, zipfile and more: about 13 MB of resident memory, measured, in
a daemon that reads its configuration once and runs on every node. So the entry point forks:
the child loads and validates the settings, writes the validated values back through a pipe
as JSON and exits, and what it imported goes with it. The daemon reads them as
:class:`SettingsView`, the same attributes read-only.

Forking is safe only while the process has one thread; where it has more (an agent started
inside a test process), or where no process can be forked, the settings are loaded in place
instead: same values, more memory.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, cast

from jobenergy.core.errors import ConfigError

if TYPE_CHECKING:
    from jobenergy.agent.settings import AgentSettings

#: Exit status of a child whose settings are invalid (the pipe carries the reason; any other
#: failure exits 1 with its own).
_INVALID = 2


class SettingsView:
    """Validated agent settings, as attributes (those of ``AgentSettings``), read-only."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        if name == "_values":  # not set yet (copy.copy makes the object bare)
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no agent setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the agent's settings are read-only once loaded")

    def __repr__(self) -> str:
        return f"SettingsView({self._values!r})"

    def __copy__(self) -> SettingsView:
        return self  # read-only: a copy would be the same

    def __deepcopy__(self, memo: dict[int, Any]) -> SettingsView:
        return self


def load_settings(config: str | Path | None = None, **overrides: Any) -> AgentSettings:
    """Return the agent's settings as ``AgentSettings.load`` would, loaded in a child.

    Raises:
        ConfigError: The settings are invalid (the message ``AgentSettings.load`` gives).
    """
    if threading.active_count() > 1 or not hasattr(os, "fork"):
        return _load_here(config, overrides)
    # No signal is handled in the child (a Ctrl-C there would unwind into the caller's code):
    # they stay blocked for its life, and in the parent until the fork is done. SIGCHLD at its
    # default, or a parent that ignores it would have the kernel reap the child before
    # waitpid could.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    on_child = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            pid = -1
        if pid == 0:  # pragma: no cover - the child's lines run in the child
            _child(write_fd, read_fd, config, overrides)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid < 0:  # no process to spare: read them here (more memory, same values)
            return _load_here(config, overrides)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, wait_status = os.waitpid(pid, 0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGCHLD, on_child)
    status = os.waitstatus_to_exitcode(wait_status)
    if status != 0:
        raise ConfigError(data.decode("utf-8", "replace")
                          or f"loading the agent settings failed (exit status {status})")
    try:
        document = json.loads(data)
        values = document["values"]
        for name in document["paths"]:
            values[name] = Path(values[name])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"loading the agent settings failed: {err}") from None
    return cast("AgentSettings", SettingsView(values))


def _load_here(config: str | Path | None, overrides: dict[str, Any]) -> AgentSettings:
    from jobenergy.agent.settings import AgentSettings

    return AgentSettings.load(config, **overrides)


def _child(write_fd: int, read_fd: int, config: str | Path | None,
           overrides: dict[str, Any]) -> None:
    """Load the settings, write them (or why not) to ``write_fd``, and exit: never returns."""
    status = 1
    try:
        os.close(read_fd)
        try:
            from jobenergy.agent.settings import AgentSettings

            settings = AgentSettings.load(config, **overrides)
            values = settings.model_dump()
            paths = [name for name, value in values.items() if isinstance(value, PurePath)]
            for name in paths:
                values[name] = str(values[name])
            payload, status = json.dumps({"values": values, "paths": paths}).encode(), 0
        except ConfigError as err:  # (a path may hold undecodable bytes: surrogates)
            payload, status = str(err).encode("utf-8", "backslashreplace"), _INVALID
        except Exception as err:  # reported by the parent, one line
            payload = f"cannot load the agent settings: {type(err).__name__}: {err}".encode(
                "utf-8", "backslashreplace")
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        # Never back into the parent's code: exit here, whatever happened above.
        os._exit(status)
