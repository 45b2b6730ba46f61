"""Group commit: agents' batches that arrive together are stored in one transaction.

A node's push (10 s of data: a few dozen rows) costs about fifteen statements, and their fixed
cost (a round trip each, SQLAlchemy's and the driver's work, the transaction) is most of what
a collector spends on it, far more than the rows. So ``POST /batches`` does not store its
batch itself: it hands it, checked and planned, to :class:`GroupWriter` and awaits the outcome.
A writer takes the batches waiting (at most one per node, at most ``ingest_group_batches``
and about ``GROUP_ROWS`` rows) and stores them with ``ingest_group`` in one transaction, on
one of ingest's threads and connections; the batches that arrive meanwhile make the next
group. With one batch waiting, its group is that batch and nothing waits longer than before;
the groups grow with the load, which is when their savings count.

One batch never costs the others. A batch refused on its own (its key stored with other
content, its energy overlapping energy stored: two agents with one node name) is left out
of its group's writes. When a group's transaction fails (a total past 64 bits, the database
gone), it is rolled back and each batch of it is stored alone, in a transaction of its own,
and gets its own outcome, exactly as without grouping. A batch's answer is sent only after
its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.collector.ingest import (
    BatchConflict,
    IngestRejected,
    IngestResult,
    Prepared,
    ingest_group,
)

__all__ = ["GROUP_ROWS", "GroupWriter"]

logger = logging.getLogger(__name__)

#: Rows (``energy_interval``) past which a group takes no further batch: a transaction of a
#: few seconds at most, whatever the batches (one batch alone may be larger).
GROUP_ROWS = 50_000


@dataclass
class _Waiting:
    prepared: Prepared
    outcome: asyncio.Future[IngestResult]


class GroupWriter:
    """Stores the batches handed to :meth:`store` in groups, ``writers`` groups at a time.

    One per server process, used from its event loop.

    Args:
        sessions: Sessions on ingest's own connections.
        threads: Ingest's worker threads (shared with job events and refusals).
        max_batches: Batches per group at most (1: a transaction per batch).
        writers: Groups written at the same time at most: while one group's transaction
            waits on the database, the next is prepared and sent.
        in_transaction: Called with the connection at the start of each transaction, before
            the batches (the server's default factors, until they are stored).
    """

    def __init__(self, sessions: sessionmaker[Session], threads: anyio.CapacityLimiter,
                 max_batches: int, writers: int,
                 in_transaction: Callable[[Connection], None]) -> None:
        self._sessions = sessions
        self._threads = threads
        self._max_batches = max_batches
        self._max_writers = writers
        self._in_transaction = in_transaction
        self._waiting: deque[_Waiting] = deque()
        self._writers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Sizes of the groups written (batches), for the metrics; set by the server.
        self.observe_group: Callable[[int], None] = lambda size: None

    async def store(self, prepared: Prepared) -> IngestResult:
        """Store one batch (in a group) and return its outcome once committed.

        Raises:
            The error storing it alone raised (``BatchConflict``, ``IngestRejected``,
            SQLAlchemy's), as ``ingest_batch`` in a transaction of its own would.
        """
        outcome: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(prepared, outcome))
        if self._writers < self._max_writers:
            self._writers += 1
            task = asyncio.create_task(self._write_while_waiting())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await outcome

    def _take(self) -> list[_Waiting]:
        """The next group: the oldest batches first, one per node, within the limits.

        A node's second batch waits for a later group (its overlap with the first is
        checked only once the first is stored); so does a batch past ``GROUP_ROWS``.
        """
        group: list[_Waiting] = []
        nodes: set[tuple[str, str]] = set()
        rows = 0
        later: list[_Waiting] = []
        while self._waiting and len(group) < self._max_batches:
            waiting = self._waiting.popleft()
            if waiting.outcome.done():  # its request is gone (the agent sends it again)
                continue
            batch, size = waiting.prepared.batch, len(waiting.prepared.plan.rows)
            node = (batch.cluster, batch.node)
            if node in nodes or (group and rows + size > GROUP_ROWS):
                later.append(waiting)
                continue
            group.append(waiting)
            nodes.add(node)
            rows += size
        self._waiting.extendleft(reversed(later))
        return group

    async def _write_while_waiting(self) -> None:
        try:
            while group := self._take():
                try:
                    outcomes = await anyio.to_thread.run_sync(
                        self._write, [w.prepared for w in group], limiter=self._threads)
                except BaseException:  # cancelled (the server stops): no outcome is known
                    for waiting in group:
                        waiting.outcome.cancel()
                    raise
                self.observe_group(len(group))
                for waiting, outcome in zip(group, outcomes, strict=True):
                    if waiting.outcome.done():
                        continue
                    if isinstance(outcome, BaseException):
                        waiting.outcome.set_exception(outcome)
                    else:
                        waiting.outcome.set_result(outcome)
        finally:
            self._writers -= 1

    def _write(self, group: list[Prepared]) -> list[IngestResult | BaseException]:
        """Store ``group`` in one transaction; if that fails, each batch in its own."""
        if len(group) > 1:
            try:
                return list(self._transaction(group))
            except Exception as err:  # noqa: BLE001 - each batch is retried alone below
                logger.info("a group of %d batches was not stored (%s: %s); storing them one "
                            "by one", len(group), type(err).__name__, str(err).splitlines()[0]
                            if str(err) else "")
        outcomes: list[IngestResult | BaseException] = []
        for prepared in group:
            try:
                (outcome,) = self._transaction([prepared])
            except Exception as err:  # noqa: BLE001 - handed to that batch's request
                outcome = err
            outcomes.append(outcome)
        return outcomes

    def _transaction(self, group: list[Prepared]
                     ) -> list[IngestResult | BatchConflict | IngestRejected]:
        with self._sessions() as session, session.begin():
            connection = session.connection()
            self._in_transaction(connection)
            return ingest_group(connection, group)
