"""The server's own writer of the budget state file (``budget_state_file``).

Where the collector runs on the Slurm controller, it keeps ``job_submit.lua``'s state file
current itself, every ``budget_state_interval_s``, instead of the ``jobenergy budget
write-state`` timer. A database error leaves the last file in place: it grows stale and the
submit script then fails open (and logs it), which is the intended degradation.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from jobenergy.collector.budget_usage import state_entries
from jobenergy.core.budget_state import write_state
from jobenergy.core.errors import ConfigError

logger = logging.getLogger(__name__)


def write_once(engine: Engine, path: Path, cluster: str | None) -> int:
    """Write the state file from the database now; return how many budgets it holds.

    Raises:
        SQLAlchemyError: The database could not be read (nothing written).
        ConfigError: The file could not be written.
    """
    now = datetime.now(UTC)
    with engine.connect() as conn:
        entries = state_entries(conn, now, cluster)
    for problem in write_state(path, entries, int(now.timestamp())):
        logger.warning("budget state %s: %s", path, problem)
    return len(entries)


class StateWriter:
    """Runs :func:`write_once` every ``interval_s`` in a daemon thread until :meth:`stop`."""

    def __init__(self, engine: Engine, path: Path, interval_s: float,
                 cluster: str | None) -> None:
        self._engine = engine
        self._path = path
        self._interval_s = interval_s
        self._cluster = cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobenergy-budget-state",
                                        daemon=True)

    def start(self) -> None:
        """Start writing: once right away, then every ``interval_s``."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the write under way, if any."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                write_once(self._engine, self._path, self._cluster)
            except SQLAlchemyError as err:
                logger.warning("budget state %s not refreshed: %s", self._path,
                               str(getattr(err, "orig", None) or err).splitlines()[0])
            except ConfigError as err:
                logger.error("%s", err)
            self._stop.wait(self._interval_s)
