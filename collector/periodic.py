"""Background work of the server: a job run right away, then every ``interval_s``, in a
daemon thread, until :meth:`Periodic.stop`.

The leaderboards' roll-ups (``rollups.py``), the job details (``job_details.py``) and the
budgets' view (``budget_writer.py``) each run in one, on their own, so that a long run of one
holds up none of the others. A database that is down or busy costs a round, logged, not the
thread: the next round tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)


class Periodic:
    """Runs ``work(stop)`` once right away, then every ``interval_s``; ``stop`` is set when
    :meth:`stop` is called, for work that can end early. ``failed`` prefixes the warning of a
    round that failed (what was not done, and what that means)."""

    def __init__(self, name: str, interval_s: float, work: Callable[[threading.Event], object],
                 failed: str) -> None:
        self._interval_s = interval_s
        self._work = work
        self._failed = failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start: a round right away, then one every ``interval_s``."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the round under way (or the part of it under way), if any."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._work(self._stop)
            except SQLAlchemyError as err:
                logger.warning("%s: %s", self._failed,
                               (str(getattr(err, "orig", None) or err).splitlines() or [""])[0])
            except Exception:  # the thread must outlive any one round
                logger.exception(self._failed)
            self._stop.wait(self._interval_s)
