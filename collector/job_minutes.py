"""Per-job minute series (``job_energy_minute``), rolled up from a month of raw intervals just
before retention drops it (``collector/partitions.py``: ``jobenergy db maintain``).

Ingest writes nothing here (no cost per batch): the raw intervals already hold a job's curve
while they are kept, and the roll-up runs once per month, over one partition.
:func:`roll_up_partition` turns every job share of the partition (``job_id`` not NULL; the
node's own energy is in ``node_energy_hour``) into (cluster, job, node, component, source,
UTC minute) energy, keeping the series' line identities (one line per GPU):

- the rows lying inside one minute (most of them) are summed by an ``INSERT ... SELECT ...
  GROUP BY date_trunc('minute')`` in the database;
- the rows crossing a minute edge are split over the minutes they overlap by largest
  remainder in Python (:func:`jobenergy.core.split.split_over_periods`, the split ingest uses
  for hours), streamed and written in chunks.

Both add to existing minutes (``ON CONFLICT ... DO UPDATE``): the last rows of a month reach
into the first minute of the next one, which that month's own roll-up adds to later. So a
job's minutes add up to its ``job_energy`` exactly, per (node, component, source).

A month must be rolled up once, never twice: ``interval_retention`` row
:data:`ROLLED_THROUGH` holds the end of the latest month rolled up (months go oldest first),
and a partition whose month ends at or before it is skipped. The roll-up writes that mark
in its own transaction, so rolling up and dropping in one transaction, or rolling up,
crashing and running ``maintain`` again, counts every row once. The partition is locked
against writes (``SHARE``) while it is read, so no late row lands in it between the roll-up
and the drop.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobenergy.collector.models import IntervalRetention, JobEnergyMinute
from jobenergy.core.split import split_over_periods

logger = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
#: ``interval_retention`` row: the raw intervals starting before its ``kept_from`` are in
#: ``job_energy_minute`` (the end of the latest month rolled up).
ROLLED_THROUGH = "job_energy_minute"
#: ``interval_retention`` row: the minutes start here (months dropped before revision 0017
#: were not rolled up); absent: from the first interval.
MINUTES_FROM = "job_energy_minute_from"

#: Crossing rows fetched and written per round (bounded memory whatever the month's size).
CHUNK_ROWS = 20_000

_PARTITION_RE = re.compile(r"^energy_interval_p\d{4}_\d{2}$")
#: The UTC minute holding ``start_at`` (a timestamptz), and the end of that minute.
_MINUTE = "(date_trunc('minute', start_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
_NEXT_MINUTE = f"({_MINUTE} + interval '1 minute')"

_INSIDE_SQL = f"""
INSERT INTO job_energy_minute AS m
    (minute_at, energy_uj, cluster, job_id, node, component, source, estimated)
SELECT {_MINUTE}, SUM(energy_uj), cluster, job_id, node, component, source, bool_or(estimated)
FROM {{partition}}
WHERE job_id IS NOT NULL AND end_at <= {_NEXT_MINUTE}
GROUP BY cluster, job_id, node, component, source, {_MINUTE}
ON CONFLICT (cluster, job_id, minute_at, node, component, source) DO UPDATE
SET energy_uj = m.energy_uj + EXCLUDED.energy_uj, estimated = m.estimated OR EXCLUDED.estimated
"""

_CROSSING_SQL = f"""
SELECT cluster, job_id, node, component, source, start_at, end_at, energy_uj, estimated
FROM {{partition}}
WHERE job_id IS NOT NULL AND end_at > {_NEXT_MINUTE}
"""

_M = JobEnergyMinute


def rolled_through(conn: Connection) -> datetime | None:
    """Return the end of the latest month rolled up (None: none was)."""
    return _marker(conn, ROLLED_THROUGH)


def _marker(conn: Connection, name: str) -> datetime | None:
    value = conn.execute(select(IntervalRetention.kept_from)
                         .where(IntervalRetention.name == name)).scalar_one_or_none()
    return None if value is None else value.astimezone(UTC)


def _mark_rolled_through(conn: Connection, through: datetime) -> None:
    table = IntervalRetention.__table__
    stmt = pg_insert(table).values(name=ROLLED_THROUGH, kept_from=through)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={"kept_from": func.greatest(table.c.kept_from, stmt.excluded.kept_from)}))


def _add_minutes(conn: Connection, minutes: dict[tuple[Any, ...], list[Any]]) -> None:
    """Upsert-add ``(cluster, job, node, component, source, minute) -> [µJ, estimated]``."""
    if not minutes:
        return
    stmt = pg_insert(JobEnergyMinute)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_M.cluster, _M.job_id, _M.minute_at, _M.node, _M.component, _M.source],
        set_={_M.energy_uj: _M.energy_uj + stmt.excluded.energy_uj,
              _M.estimated: _M.estimated | stmt.excluded.estimated})
    conn.execute(stmt, [
        {"cluster": c, "job_id": j, "node": n, "component": comp, "source": s,
         "minute_at": minute, "energy_uj": energy, "estimated": estimated}
        for (c, j, n, comp, s, minute), (energy, estimated) in minutes.items()])


def roll_up_partition(conn: Connection, partition: str, month_end: datetime) -> int:
    """Add the job shares of one monthly ``energy_interval`` partition to
    ``job_energy_minute`` and mark the month rolled up; a month already rolled up is skipped.

    Args:
        conn: PostgreSQL connection inside a transaction (the caller's: with the drop, or
            alone).
        partition: The partition, ``energy_interval_pYYYY_MM``.
        month_end: The end of its month (its upper bound).

    Returns:
        Minute rows upserted (a row written then added to counts twice; 0: skipped,
        already rolled up).
    """
    if not _PARTITION_RE.match(partition):
        raise ValueError(f"not a monthly energy_interval partition: {partition!r}")
    through = rolled_through(conn)
    if through is not None and month_end <= through:
        logger.info("%s already rolled up to minutes (through %s): skipped", partition,
                    through.isoformat())
        return 0
    # Late rows of this month (a batch reaching back) wait until the caller commits: none can
    # land between what is read here and the drop.
    conn.execute(text(f"LOCK TABLE {partition} IN SHARE MODE"))
    inside = conn.execute(text(_INSIDE_SQL.format(partition=partition))).rowcount
    crossing = written = 0
    # Streamed (a server-side cursor for this statement only: the upserts between fetches
    # run on the same connection, in the same transaction).
    rows = conn.execute(text(_CROSSING_SQL.format(partition=partition))
                        .execution_options(yield_per=CHUNK_ROWS))
    for chunk in rows.partitions():
        minutes: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, False])
        for cluster, job_id, node, component, source, start, end, energy_uj, est in chunk:
            for minute, part in split_over_periods(start, end, int(energy_uj), MINUTE).items():
                acc = minutes[(cluster, job_id, node, component, source, minute)]
                acc[0] += part
                acc[1] = acc[1] or bool(est)
        _add_minutes(conn, minutes)
        crossing += len(chunk)
        written += len(minutes)
    _mark_rolled_through(conn, month_end)
    logger.info("%s rolled up to job minutes: %d minute groups inside a minute, %d rows "
                "crossing a minute edge", partition, inside, crossing)
    return inside + written
