"""How many live leaderboards and summaries a server computes at once.

A live leaderboard or summary reads every job of its window: milliseconds on a small
database, about a second per million jobs on a large one (``bench/leaderboard_bench.py``: 4 s
for an all-time ``source=live`` leaderboard at 10 M jobs). Each holds a worker thread and a
database connection while it runs, and ingest, job lookups and the other users need both.
So:

* one server computes at most ``max_live_aggregates`` at once;
* a request beyond waits up to ``live_aggregate_wait_s`` for a slot, then gets 503 with
  ``Retry-After``; as many may wait as may run, and a request beyond those gets 503 at once
  (a waiting request holds a worker thread: the waiters never take more than twice
  ``max_live_aggregates`` of them);
* a person computes one at a time: their second waits for their first (a page asks for a
  leaderboard and a summary together), a third gets 429. So a few users looping requests
  cannot hold every slot: it takes ``max_live_aggregates`` of them.

Callers pass the session's transaction in first (``api/leaderboards.py`` commits before it
asks for a slot), so no waiting request holds a database connection. The materialised answers
(``source=rollup``, and ``auto`` on large databases) take no slot, nor does the background
materialisation.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

#: Live aggregates one person may have running or waiting at once (one runs at a time).
PER_USER = 2


class LiveSlots:
    """``slots`` live aggregates at once; waiters bounded; one at a time per person."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._inside = 0  # running or waiting
        self._per_user: dict[str, tuple[int, threading.Lock]] = {}

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(min(60, max(1, math.ceil(self.wait_s))))}

    def _busy(self, why: str, materialised: bool) -> HTTPException:
        hint = (": retry later, or ask a materialised one (period=24h|7d|30d or all time, "
                "source=auto)" if materialised else ": retry later")
        return HTTPException(status_code=503, headers=self._retry_after(),
                             detail=f"the server is computing {self.slots} live leaderboards "
                                    f"or summaries already{why}{hint}")

    @contextmanager
    def hold(self, user: str | None, materialised: bool = True) -> Iterator[None]:
        """Hold a slot while the block runs (``user`` None: a node or service, not counted
        per person; ``materialised``: the caller may ask for a materialised answer instead,
        said in the refusals).

        Raises:
            HTTPException: 429 when ``user`` already has :data:`PER_USER` running or waiting;
                503 (``Retry-After``) when as many wait as may run, or no slot frees within
                ``wait_s``.
        """
        with self._lock:
            if user is not None:
                count, own = self._per_user.get(user, (0, threading.Lock()))
                if count >= PER_USER:
                    raise HTTPException(
                        status_code=429, headers=self._retry_after(),
                        detail=f"{user} already has {count} live leaderboards or summaries "
                               "running or waiting: wait for them")
            if self._inside >= 2 * self.slots:
                raise self._busy(" and as many wait", materialised)
            self._inside += 1
            if user is not None:
                self._per_user[user] = (count + 1, own)
        deadline = time.monotonic() + self.wait_s
        try:
            # One at a time per person first, then a server slot: a person's second request
            # never takes a slot only to wait on their first.
            if user is not None and not own.acquire(timeout=self.wait_s):
                raise self._busy("", materialised)
            try:
                if not self._free.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise self._busy("", materialised)
                try:
                    yield
                finally:
                    self._free.release()
            finally:
                if user is not None:
                    own.release()
        finally:
            with self._lock:
                self._inside -= 1
                if user is not None:
                    count, _ = self._per_user[user]
                    if count > 1:
                        self._per_user[user] = (count - 1, own)
                    else:
                        del self._per_user[user]
