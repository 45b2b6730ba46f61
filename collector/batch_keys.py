"""Pruning the keys of old batches (``ingested_batch``), which otherwise grow without bound.

Each stored batch leaves its key (cluster, node, boot_id, seq) so that a retry is
acknowledged as a duplicate (DESIGN.md decision 7): about 1,000 rows/s for 10,000 nodes
pushing every 10 s, 2.6 billion a month. A key only matters while its batch can still come
back, and energy is never counted twice without it: ingest refuses a batch that reaches back
before the retained raw intervals (``interval_retention``), and one whose intervals are
still stored overlaps them (``collector/intervals.py``: ``check_no_overlap``). So once
retention has dropped raw intervals, ``jobenergy db maintain`` deletes the keys of the
batches received more than :data:`KEY_MARGIN` before the retained intervals start: a retry
of such a batch (weeks old) is then refused (409: overlap, or before the retention) instead
of acknowledged, and its energy, stored once, stays.

The margin covers agents whose clocks run ahead of the collector's (``received_at`` is the
collector's time, the intervals the agent's). Rows go in chunks of :data:`CHUNK_ROWS`, one
short transaction each (by the ``received_at`` index), so ingest never waits long on them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, tuple_

from jobenergy.collector.models import IngestedBatch
from jobenergy.collector.partitions import kept_from

#: Keys of batches received this long before the retained raw intervals start are kept.
KEY_MARGIN = timedelta(days=1)
#: Keys deleted per transaction.
CHUNK_ROWS = 50_000


def prune_batch_keys(engine: Engine, chunk_rows: int = CHUNK_ROWS) -> tuple[int, datetime | None]:
    """Delete the keys of batches received before the retained raw intervals (less the
    margin); return how many, and the cut (None: retention never dropped anything)."""
    with engine.connect() as conn:
        start = kept_from(conn)
    if start is None:
        return 0, None
    cut = start - KEY_MARGIN
    ib = IngestedBatch
    key = tuple_(ib.cluster, ib.node, ib.boot_id, ib.seq)
    total = 0
    while True:
        oldest = select(ib.cluster, ib.node, ib.boot_id, ib.seq).where(
            ib.received_at < cut).limit(chunk_rows)
        with engine.begin() as conn:
            deleted = conn.execute(delete(ib).where(key.in_(oldest))).rowcount
        total += deleted
        if deleted < chunk_rows:
            return total, cut
