"""The server's budget loop: the budget state file and the budgets enforced on running jobs.

Every ``budget_state_interval_s`` the server computes each budget's usage once and

* keeps the running jobs' view current (``collector/budget_running.py``: the budgets with a
  running policy at or past 90 %, answered to the agents with their batches);
* where the collector runs on the Slurm controller (``budget_state_file``), writes
  ``job_submit.lua``'s state file itself, instead of the ``jobenergy budget write-state``
  timer.

A database error leaves the last file and the last view in place: the file grows stale and
the submit script then fails open (and logs it), which is the intended degradation; batches
cannot be stored meanwhile either (503), so the stale view answers none.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from jobenergy.collector.budget_running import RunningBudgets
from jobenergy.collector.budget_usage import load, state_entry, statuses
from jobenergy.collector.periodic import Periodic
from jobenergy.core.budget_state import write_state
from jobenergy.core.errors import ConfigError

logger = logging.getLogger(__name__)


def refresh_once(engine: Engine, running: RunningBudgets, path: Path | None,
                 cluster: str | None) -> int:
    """Recompute the running jobs' view and, with ``path``, write the state file; return how
    many budgets were computed.

    Usage is summed once for both: every budget's when the file is written, else only those
    with a running policy (none: one small read of the budget table).

    Raises:
        SQLAlchemyError: The database could not be read (nothing changed).
        ConfigError: The file could not be written (the view was updated).
    """
    started = time.monotonic()
    now = datetime.now(UTC)
    with engine.connect() as conn:
        budgets = load(conn)
        if path is None:
            budgets = [b for b in budgets if b["running_policy"] != "none"]
        computed = statuses(conn, budgets, now)
    running.update(computed, started)
    if path is not None:
        entries = [state_entry(s) for s in computed
                   if s.active and (cluster is None or s.budget["cluster"] == cluster)]
        for problem in write_state(path, entries, int(now.timestamp())):
            logger.warning("budget state %s: %s", path, problem)
    return len(computed)


def budget_refresher(engine: Engine, running: RunningBudgets, interval_s: float,
                     path: Path | None = None, cluster: str | None = None) -> Periodic:
    """:func:`refresh_once` in the background: right away, then every ``interval_s``.

    Args:
        engine: The server's database.
        running: The view the batch answers read (``app.state.running_budgets``).
        interval_s: Seconds between two refreshes.
        path: The state file to write (None: none here).
        cluster: Write only this cluster's budgets into the file (the view holds all).
    """
    def work(_stop: threading.Event) -> None:
        try:
            refresh_once(engine, running, path, cluster)
        except ConfigError as err:
            logger.error("%s", err)

    return Periodic("jobenergy-budgets", interval_s, work,
                    f"budgets not refreshed (state file {path})")
