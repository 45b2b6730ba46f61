"""How many live leaderboards and summaries a server computes at once.

A live leaderboard or summary reads every job of its window: milliseconds on a small
database, about a second per million jobs on a large one (``bench/leaderboard_bench.py``: 4 s
for an all-time ``source=live`` leaderboard at 10 M jobs). Each holds a worker thread and a
database connection while it runs, and ingest, job lookups and the other users need both. So
one server computes at most ``max_live_aggregates`` at once; a request beyond waits up to
``live_aggregate_wait_s`` for a slot, then gets 503 with ``Retry-After``. A user may have at
most :data:`PER_USER` of them running or waiting (a page asks for a leaderboard and a
summary together), more get 429: the per-user rate limit counts requests, not their cost,
and one user's burst of slow requests would otherwise hold every waiting thread.

The materialised answers (``source=rollup``, and ``auto`` on large databases) take no slot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

#: Live aggregates one user may have running or waiting at once.
PER_USER = 2


class LiveSlots:
    """A counting semaphore of ``slots``, and a count per user of those held or awaited."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._per_user: dict[str, int] = {}

    @contextmanager
    def hold(self, user: str | None) -> Iterator[None]:
        """Hold a slot while the block runs (``user`` None: a service, not counted per user).

        Raises:
            HTTPException: 429 when ``user`` already has :data:`PER_USER` running or waiting;
                503 (``Retry-After``) when no slot frees within ``wait_s``.
        """
        if user is not None:
            with self._lock:
                mine = self._per_user.get(user, 0)
                if mine >= PER_USER:
                    raise HTTPException(
                        status_code=429, headers={"Retry-After": "5"},
                        detail=f"{user} already has {mine} live leaderboards or summaries "
                               "running: wait for them, or ask a materialised one "
                               "(period=24h|7d|30d or all time, source=auto)")
                self._per_user[user] = mine + 1
        try:
            if not self._free.acquire(timeout=self.wait_s):
                raise HTTPException(
                    status_code=503, headers={"Retry-After": "10"},
                    detail=f"the server is computing {self.slots} live leaderboards or "
                           "summaries already: retry later, or ask a materialised one "
                           "(period=24h|7d|30d or all time, source=auto)")
            try:
                yield
            finally:
                self._free.release()
        finally:
            if user is not None:
                with self._lock:
                    left = self._per_user[user] - 1
                    if left:
                        self._per_user[user] = left
                    else:
                        del self._per_user[user]
