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
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.collector.ingest import (
    BatchConflict,
    IngestRejected,
    IngestResult,
    Prepared,
    ingest_group,
)
from jobenergy.core.errors import JobEnergyError

__all__ = ["GROUP_ROWS", "GroupWriter", "WriterBusy"]

logger = logging.getLogger(__name__)

#: Rows (``energy_interval``) past which a group takes no further batch: a transaction of a
#: few seconds at most. A larger batch is stored alone, and only every other group, so that
#: a node sending huge batches never holds up the others' small ones for long.
GROUP_ROWS = 50_000
#: Batches of one node waiting at most: an agent sends one at a time (and, after a timeout,
#: the same again); beyond, 503 with Retry-After.
WAITING_PER_NODE = 4
#: Rows waiting at most, all nodes together, in batches of at most ``GROUP_ROWS`` (a parsed
#: batch holds about 10 times its body in memory), and one larger batch beside them; beyond,
#: 503 with Retry-After.
WAITING_ROWS = 4 * GROUP_ROWS
#: Batches remembered as having failed in the database alone (a total past 64 bits, ...):
#: sent again, such a batch is stored alone, never again in a group it would fail.
FAILED_REMEMBERED = 1024


class WriterBusy(JobEnergyError):
    """Too many batches wait already (of this node, or in all): answer 503, retry later."""


@dataclass(eq=False)  # compared by identity
class _Waiting:
    prepared: Prepared
    outcome: asyncio.Future[IngestResult]

    @property
    def node(self) -> tuple[str, str]:
        return (self.prepared.batch.cluster, self.prepared.batch.node)

    @property
    def rows(self) -> int:
        return len(self.prepared.plan.rows)


class GroupWriter:
    """Stores the batches handed to :meth:`store` in groups, ``writers`` groups at a time.

    One per server process, used from its event loop.

    Args:
        sessions: Sessions on ingest's own connections.
        threads: Ingest's worker threads (shared with job events and refusals).
        max_batches: Batches per group at most (1: a transaction per batch).
        writers: Groups written at the same time at most.
        in_transaction: Called with the connection at the start of each transaction, before
            the batches (the server's default factors, until they are stored).
    """

    def __init__(self, sessions: sessionmaker[Session], threads: anyio.CapacityLimiter,
                 max_batches: int, writers: int,
                 in_transaction: Callable[[Connection], None]) -> None:
        if max_batches < 1 or writers < 1:
            raise ValueError("a group holds at least one batch, and one writer writes them")
        self._sessions = sessions
        self._threads = threads
        self._max_batches = max_batches
        self._max_writers = writers
        self._in_transaction = in_transaction
        self._waiting: deque[_Waiting] = deque()
        self._waiting_by_node: Counter[tuple[str, str]] = Counter()
        self._waiting_rows = 0  # of the batches of at most GROUP_ROWS rows
        self._large_waiting = 0  # batches of more
        self._alone_turn = False
        self._failed: OrderedDict[str, None] = OrderedDict()
        self._writers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Sizes of the groups written (batches), for the metrics; set by the server.
        self.observe_group: Callable[[int], None] = lambda size: None
        #: Called once per group stored again batch by batch; set by the server.
        self.count_fallback: Callable[[], None] = lambda: None

    async def store(self, prepared: Prepared) -> IngestResult:
        """Store one batch (in a group) and return its outcome once committed.

        Raises:
            WriterBusy: Too many batches wait (of its node, or in all); nothing stored.
            The error storing it alone raised (``BatchConflict``, ``IngestRejected``,
            SQLAlchemy's), as ``ingest_batch`` in a transaction of its own would.
        """
        waiting = _Waiting(prepared, asyncio.get_running_loop().create_future())
        node, rows = waiting.node, waiting.rows
        if self._waiting_by_node[node] >= WAITING_PER_NODE:
            raise WriterBusy(f"{WAITING_PER_NODE} batches of node {node[1]} are waiting to be "
                             "stored already; retry later")
        if rows > GROUP_ROWS:
            # One large batch waits at a time, beside the small ones' rows: refused only
            # while another waits, it is never starved by a steady flow of small ones.
            if self._large_waiting:
                raise WriterBusy(f"a batch of more than {GROUP_ROWS} rows is waiting to be "
                                 "stored already; retry later")
        elif self._waiting_rows + rows > WAITING_ROWS:
            raise WriterBusy(f"{self._waiting_rows} rows are waiting to be stored already; "
                             "retry later")
        self._count(waiting, 1)
        self._waiting.append(waiting)
        self._start_writer()
        return await waiting.outcome

    def _count(self, waiting: _Waiting, sign: int) -> None:
        self._waiting_by_node[waiting.node] += sign
        if waiting.rows > GROUP_ROWS:
            self._large_waiting += sign
        else:
            self._waiting_rows += sign * waiting.rows

    def _start_writer(self) -> None:
        if self._waiting and self._writers < self._max_writers:
            self._writers += 1
            task = asyncio.create_task(self._write_while_waiting())
            self._tasks.add(task)
            # Not in the task's own finally: a task cancelled before it ran never runs that.
            task.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._writers -= 1
        failure = asyncio.CancelledError() if task.cancelled() else task.exception()
        if failure is not None:
            if not isinstance(failure, asyncio.CancelledError):
                logger.error("the batch writer failed; its waiting batches are answered 503",
                             exc_info=failure)
            # Nothing answers these any more: answered now (the agents send them again).
            for waiting in self._waiting:
                _give_up(waiting, failure)
            self._waiting.clear()
            self._waiting_by_node.clear()
            self._waiting_rows = self._large_waiting = 0
            return
        # A batch handed over after the writer found nothing left, but before this callback
        # (the loop runs other steps in between), would otherwise wait for the next batch.
        self._start_writer()

    def _alone(self, waiting: _Waiting) -> bool:
        return waiting.rows > GROUP_ROWS or waiting.prepared.digest in self._failed

    def _take(self) -> list[_Waiting]:
        """The next group: the oldest batches first, one per node, within the limits.

        A node's second batch waits for a later group (its overlap with the first is
        checked only once the first is stored). A batch to store alone (larger than
        ``GROUP_ROWS``, or failed before) makes every other group at most, so that the
        others' batches keep going.
        """
        live = [w for w in self._waiting if not w.outcome.done()]  # gone: the agent resends
        alone = next((w for w in live if self._alone(w)), None)
        group: list[_Waiting] = []
        if alone is not None and (self._alone_turn or all(self._alone(w) for w in live)):
            group = [alone]
        else:
            nodes: set[tuple[str, str]] = set()
            rows = 0
            for waiting in live:
                if len(group) >= self._max_batches:
                    break
                if (self._alone(waiting) or waiting.node in nodes
                        or rows + waiting.rows > GROUP_ROWS):
                    continue
                group.append(waiting)
                nodes.add(waiting.node)
                rows += waiting.rows
        self._alone_turn = alone is not None and not (len(group) == 1 and group[0] is alone)
        taken = {id(w) for w in group}
        for waiting in self._waiting:
            if id(waiting) in taken or waiting.outcome.done():
                self._count(waiting, -1)
        self._waiting_by_node += Counter()  # drop the nodes at 0
        self._waiting = deque(w for w in live if id(w) not in taken)
        return group

    async def _write_while_waiting(self) -> None:
        while group := self._take():
            try:
                outcomes = await anyio.to_thread.run_sync(
                    self._write, [w.prepared for w in group], limiter=self._threads)
                self.observe_group(len(group))
                for waiting, outcome in zip(group, outcomes, strict=True):
                    if waiting.outcome.done():
                        continue
                    if isinstance(outcome, BaseException):
                        waiting.outcome.set_exception(outcome)
                    else:
                        waiting.outcome.set_result(outcome)
            except BaseException as err:
                # Cancelled (the server stops), or a fault of this code: no outcome is known
                # for the group; the done callback answers the batches still waiting.
                for waiting in group:
                    _give_up(waiting, err)
                raise

    def _write(self, group: list[Prepared]) -> list[IngestResult | BaseException]:
        """Store ``group`` in one transaction; if that fails, each batch in its own."""
        if len(group) > 1:
            try:
                return list(self._transaction(group))
            except Exception as err:  # noqa: BLE001 - each batch is retried alone below
                if _unreachable(err):
                    # The database is down or out of connections: each batch alone would
                    # wait as long again. All are answered 503 now; the agents retry.
                    return [err] * len(group)
                self.count_fallback()
                logger.info("a group of %d batches was not stored (%s: %s); storing them one "
                            "by one", len(group), type(err).__name__, str(err).splitlines()[0]
                            if str(err) else "")
        outcomes: list[IngestResult | BaseException] = []
        for prepared in group:
            try:
                (outcome,) = self._transaction([prepared])
            except Exception as err:  # noqa: BLE001 - handed to that batch's request
                if _unreachable(err):  # the database went away: the rest are answered too
                    return outcomes + [err] * (len(group) - len(outcomes))
                outcome = err
                self._failed[prepared.digest] = None
                while len(self._failed) > FAILED_REMEMBERED:
                    self._failed.popitem(last=False)
            outcomes.append(outcome)
        return outcomes

    def _transaction(self, group: list[Prepared]
                     ) -> list[IngestResult | BatchConflict | IngestRejected]:
        with self._sessions() as session, session.begin():
            connection = session.connection()
            self._in_transaction(connection)
            return ingest_group(connection, group)


def _give_up(waiting: _Waiting, why: BaseException) -> None:
    """Answer a waiting batch that will not be stored: cancelled if the server stops, else
    busy (503, the agent sends it again)."""
    if waiting.outcome.done():
        return
    if isinstance(why, asyncio.CancelledError):
        waiting.outcome.cancel()
    else:
        waiting.outcome.set_exception(WriterBusy(f"the batch writer failed ({why!r}); retry "
                                                 "later"))


def _unreachable(err: Exception) -> bool:
    """Whether ``err`` says the database cannot be worked with now (down, no connection to
    be had), rather than something about these batches (a deadlock, a refused value)."""
    if isinstance(err, sa_exc.TimeoutError):  # no connection free in the pool in time
        return True
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError):
        sqlstate = getattr(err.orig, "sqlstate", None) or ""
        # Class 40 (deadlock, serialization failure) is about this transaction: retried.
        # SQLite's "database is locked" has none: as before group commit, answered 503.
        return not sqlstate.startswith("40")
    return False
