"""Read the agent's settings in a short-lived child, so the daemon never imports pydantic-settings.

``AgentSettings`` (``agent/settings.py``) is the one definition of the agent's keys, defaults
and checks. Importing pydantic-settings, though, also imports asyncio (and ssl through it),
python-dotenv, argparse, email, zipfile and more: about 13 MB of resident memory, measured, in
a daemon that reads its configuration once and runs on every node. So the entry point forks:
the child loads and validates the settings, writes the validated values back through a pipe
as JSON and exits, and what it imported goes with it. The daemon reads them as
:class:`SettingsView`, the same attributes read-only.

Forking is safe only while the process has one thread; where it has more (an agent started
inside a test process), the settings are loaded in place instead: same values, more memory.
"""

from __future__ import annotations

import json
import os
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
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no agent setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the agent's settings are read-only once loaded")

    def __repr__(self) -> str:
        return f"SettingsView({self._values!r})"


def load_settings(config: str | Path | None = None, **overrides: Any) -> AgentSettings:
    """Return the agent's settings as ``AgentSettings.load`` would, loaded in a child.

    Raises:
        ConfigError: The settings are invalid (the message ``AgentSettings.load`` gives).
    """
    if threading.active_count() > 1 or not hasattr(os, "fork"):
        from jobenergy.agent.settings import AgentSettings

        return AgentSettings.load(config, **overrides)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's lines run in the child
        _child(write_fd, read_fd, config, overrides)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    if status != 0:
        raise ConfigError(data.decode("utf-8", "replace")
                          or f"loading the agent settings failed (exit status {status})")
    document = json.loads(data)
    values = document["values"]
    for name in document["paths"]:
        values[name] = Path(values[name])
    return cast("AgentSettings", SettingsView(values))


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
        except ConfigError as err:
            payload, status = str(err).encode(), _INVALID
        except Exception as err:  # reported by the parent, one line
            payload = f"cannot load the agent settings: {type(err).__name__}: {err}".encode()
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        # Never back into the parent's code: exit here, whatever happened above.
        os._exit(status)
