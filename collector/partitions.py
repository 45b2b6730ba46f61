"""Monthly partitions of ``energy_interval`` on PostgreSQL (DESIGN.md decision 8).

On PostgreSQL ``energy_interval`` is RANGE-partitioned on ``start_at`` (revision
``0005_partition_intervals``): one partition per UTC month, ``energy_interval_pYYYY_MM``, and
a DEFAULT partition, ``energy_interval_default``, so that an insert never fails for want of a
partition. :func:`ensure_interval_partitions` creates the coming months' partitions; it runs at
server start and daily from ``jobenergy db maintain`` (systemd timer), which also applies the
retention: :func:`drop_expired_partitions` drops the months that ended more than
``--retention-days`` ago, whole partitions, never row deletes, after rolling each up into the
per-job minute series in the same transaction (``collector/job_minutes.py``). SQLite keeps one
plain table and none of this applies.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobenergy.collector.job_minutes import roll_up_partition
from jobenergy.collector.models import IntervalRetention

logger = logging.getLogger(__name__)

#: The ``interval_retention`` row of the raw intervals.
RETAINED = "energy_interval"

PARENT = "energy_interval"
DEFAULT_PARTITION = f"{PARENT}_default"

#: Names of the partitions (monthly and DEFAULT). Alembic's comparison of the models with the
#: database skips them: they are not models, the parent is (collector/migrations/env.py).
PARTITION_NAME_RE = re.compile(rf"^{PARENT}_(p\d{{4}}_\d{{2}}|default)$")

#: Rows moved out of DEFAULT ride through this temporary table.
_STAGING = "_energy_interval_moving"


def partition_name(year: int, month: int) -> str:
    """Name of the partition holding ``start_at`` in the UTC month ``year``-``month``."""
    return f"{PARENT}_p{year:04d}_{month:02d}"


def month_bounds(year: int, month: int) -> tuple[str, str]:
    """``FROM``/``TO`` literals of a month's partition (UTC midnight of the 1st, of the next)."""
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return (
        f"{year:04d}-{month:02d}-01 00:00:00+00",
        f"{next_year:04d}-{next_month:02d}-01 00:00:00+00",
    )


def add_months(year: int, month: int, months: int) -> tuple[int, int]:
    """The month ``months`` after ``year``-``month``."""
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def is_partition_name(name: str | None) -> bool:
    """Whether ``name`` is one of ``energy_interval``'s partitions."""
    return name is not None and PARTITION_NAME_RE.match(name) is not None


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic ``include_name`` hook: leave the partitions out of autogenerate comparisons.

    PostgreSQL lists each partition as a table (with copies of the parent's indexes); the
    models describe only the parent, so without this every partition would read as a table to
    drop.
    """
    return not (type_ == "table" and is_partition_name(name))


def is_partitioned(conn: Connection) -> bool:
    """Whether ``energy_interval`` is a partitioned table here (False on SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p "
                "JOIN pg_class c ON c.oid = p.partrelid "
                "WHERE c.oid = to_regclass(:name))"
            ),
            {"name": PARENT},
        ).scalar()
    )


def create_month_partition(conn: Connection, year: int, month: int) -> bool:
    """Create one month's partition unless it exists, moving its rows out of DEFAULT.

    PostgreSQL refuses to create a partition whose range already has rows in the DEFAULT
    partition, so those rows are deleted from DEFAULT into a temporary table, the partition is
    created and they are inserted again (ids kept), all in the caller's transaction. DEFAULT is
    locked against writes first, so no row of that month can land there in between.

    Returns:
        True when the partition was created.
    """
    name = partition_name(year, month)
    if conn.execute(text("SELECT to_regclass(:name)"), {"name": name}).scalar() is not None:
        return False
    lo, hi = month_bounds(year, month)
    conn.execute(text(f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE"))
    moved = conn.execute(
        text(
            f"SELECT count(*) FROM {DEFAULT_PARTITION} "
            "WHERE start_at >= CAST(:lo AS timestamptz) AND start_at < CAST(:hi AS timestamptz)"
        ),
        {"lo": lo, "hi": hi},
    ).scalar_one()
    if moved:
        conn.execute(text(f"CREATE TEMPORARY TABLE {_STAGING} (LIKE {PARENT})"))
        conn.execute(
            text(
                f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
                "WHERE start_at >= CAST(:lo AS timestamptz) "
                "AND start_at < CAST(:hi AS timestamptz) RETURNING *) "
                f"INSERT INTO {_STAGING} SELECT * FROM moved"
            ),
            {"lo": lo, "hi": hi},
        )
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {PARENT} "
            f"FOR VALUES FROM ('{lo}') TO ('{hi}')"
        )
    )
    if moved:
        conn.execute(text(f"INSERT INTO {name} SELECT * FROM {_STAGING}"))
        conn.execute(text(f"DROP TABLE {_STAGING}"))
        logger.info("moved %d energy_interval rows from %s to %s", moved, DEFAULT_PARTITION, name)
    logger.info("created partition %s", name)
    return True


def ensure_interval_partitions(
    conn: Connection, months_ahead: int = 2, now: datetime | None = None
) -> list[str]:
    """Create the missing monthly partitions from the current UTC month to ``months_ahead``.

    Idempotent: existing partitions are left alone. Rows that already landed in the DEFAULT
    partition for a month being created are moved into it. A no-op on SQLite and on a
    PostgreSQL database whose ``energy_interval`` is not partitioned (schema not migrated).

    Args:
        conn: Connection inside a transaction (``engine.begin()``).
        months_ahead: How many months after the current one to prepare.
        now: The current time (tests); defaults to now.

    Returns:
        Names of the partitions created.
    """
    if not is_partitioned(conn):
        return []
    now = (now or datetime.now(UTC)).astimezone(UTC)
    created = []
    for ahead in range(months_ahead + 1):
        year, month = add_months(now.year, now.month, ahead)
        if create_month_partition(conn, year, month):
            created.append(partition_name(year, month))
    return created


#: How long dropping a partition waits for its lock on ``energy_interval`` (DROP takes ACCESS
#: EXCLUSIVE on the parent; while it waits, ingest queues behind it) before giving up.
DROP_LOCK_TIMEOUT = "5s"

_MONTHLY_RE = re.compile(rf"^{PARENT}_p(\d{{4}})_(\d{{2}})$")


@dataclass(frozen=True)
class RetentionResult:
    """What :func:`drop_expired_partitions` did.

    Attributes:
        cut: Months that ended before this time were dropped (None: retention off, or nothing
            partitioned here).
        dropped: Names of the partitions dropped, oldest first.
        default_rows_before_cut: Rows of the DEFAULT partition starting before ``cut``: left
            alone (a row delete is not what retention does), reported.
        minute_rows: Rows upserted into ``job_energy_minute`` by the roll-up of the dropped
            partitions (0 for those rolled up before, by :func:`roll_up_expired`).
    """

    cut: datetime | None
    dropped: list[str] = field(default_factory=list)
    default_rows_before_cut: int = 0
    minute_rows: int = 0


def _monthly_partitions(conn: Connection) -> list[tuple[int, int, str, str]]:
    """``(year, month, name, bound)`` of each monthly partition attached to the parent.

    ``bound`` is the partition's bound as PostgreSQL writes it, in UTC (the session's time zone
    is set to UTC for the query, then put back).
    """
    zone = conn.execute(text("SELECT current_setting('TimeZone')")).scalar_one()
    conn.execute(text("SELECT set_config('TimeZone', 'UTC', true)"))
    try:
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:parent)"
            ),
            {"parent": PARENT},
        ).all()
    finally:
        conn.execute(text("SELECT set_config('TimeZone', :zone, true)"), {"zone": zone})
    found = []
    for name, bound in rows:
        match = _MONTHLY_RE.match(name)
        if match is not None:
            found.append((int(match[1]), int(match[2]), name, bound))
    return sorted(found)


def record_kept_from(conn: Connection, kept_from: datetime) -> None:
    """Move the start of the retained raw intervals forward to ``kept_from`` (never back)."""
    table = IntervalRetention.__table__
    stmt = pg_insert(table).values(name=RETAINED, kept_from=kept_from)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={"kept_from": func.greatest(table.c.kept_from, stmt.excluded.kept_from)}))


def kept_from(conn: Connection) -> datetime | None:
    """Return when the retained raw intervals start (None: nothing was ever dropped)."""
    table = IntervalRetention.__table__
    return conn.execute(select(table.c.kept_from).where(table.c.name == RETAINED)
                        ).scalar_one_or_none()


def _expired(conn: Connection, cut: datetime) -> list[tuple[str, datetime]]:
    """``(name, month end)`` of the monthly partitions whose month ended before ``cut``,
    oldest first (a partition whose bound is not its name's month is left out, warned)."""
    expired = []
    for year, month, name, bound in _monthly_partitions(conn):
        lo, hi = month_bounds(year, month)
        if bound != f"FOR VALUES FROM ('{lo}') TO ('{hi}')":
            logger.warning("partition %s has bound %s, not its month's: left alone", name, bound)
            continue
        if datetime.fromisoformat(hi) < cut:
            expired.append((name, datetime.fromisoformat(hi)))
    return expired


def _with_lock_timeout(conn: Connection) -> str:
    """Wait at most :data:`DROP_LOCK_TIMEOUT` for locks until put back; return the old value."""
    timeout = conn.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": DROP_LOCK_TIMEOUT})
    return str(timeout)


def roll_up_expired(conn: Connection, retention_days: int, now: datetime | None = None
                    ) -> tuple[list[str], int]:
    """Roll the partitions that retention would drop up into ``job_energy_minute`` without
    dropping them: the first step of :func:`drop_expired_partitions`, alone (which does both
    in one transaction). Months already rolled up are skipped, so a later drop counts nothing
    twice.

    Returns:
        The partitions rolled up now, and the minute rows upserted.
    """
    if retention_days <= 0 or not is_partitioned(conn):
        return [], 0
    now = (now or datetime.now(UTC)).astimezone(UTC)
    timeout = _with_lock_timeout(conn)
    rolled, rows = [], 0
    for name, month_end in _expired(conn, now - timedelta(days=retention_days)):
        written = roll_up_partition(conn, name, month_end)
        if written:
            rolled.append(name)
            rows += written
    conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": timeout})
    return rolled, rows


def drop_expired_partitions(
    conn: Connection, retention_days: int, now: datetime | None = None
) -> RetentionResult:
    """Drop the monthly ``energy_interval`` partitions whose whole month ended more than
    ``retention_days`` days ago; never delete rows.

    Nothing else depends on those rows: every total (``job``, ``job_energy``,
    ``job_energy_hour``, ``node_energy``, ``node_energy_hour``, ``job_node``, ``job_phase``,
    ``job_step_energy``, ``job_board_part``, ``node_progress``) is added to at ingest from the
    batch itself (``collector/ingest.py``), and a factor change recomputes from
    ``job_energy_hour``, not from the intervals; the readers of ``energy_interval`` are
    ingest's overlap check (``collector/intervals.py``), for batches that reach back into a
    node's stored span, and the series endpoints, which answer before the retained span from
    the hourly tables (nodes, clusters) and from ``job_energy_minute`` (jobs): each expired
    partition is rolled up into it first, in this transaction (``collector/job_minutes.py``;
    a month rolled up before is not added again).

    A partition whose bound is not its name's month (not made by this module) is left alone,
    with a warning. Rows of the DEFAULT partition older than the cut stay (a warning gives their
    count): retention drops partitions, it does not delete rows. Dropping takes an ACCESS
    EXCLUSIVE lock on ``energy_interval`` until the caller commits (batches wait meanwhile); it
    waits at most :data:`DROP_LOCK_TIMEOUT` for that lock, else fails and the caller rolls back
    (the next run tries again). Idempotent. A no-op on SQLite, on a PostgreSQL database
    whose ``energy_interval`` is not partitioned, and with ``retention_days`` 0 (keep forever).

    Args:
        conn: Connection inside a transaction (``engine.begin()``).
        retention_days: Days of intervals to keep after their month ends; 0: keep forever.
        now: The current time (tests); defaults to now.

    Returns:
        The cut, the partitions dropped and the DEFAULT rows older than the cut.
    """
    if retention_days < 0:
        raise ValueError(f"retention_days must be >= 0, got {retention_days}")
    if retention_days == 0 or not is_partitioned(conn):
        return RetentionResult(cut=None)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    cut = now - timedelta(days=retention_days)
    expired = _expired(conn, cut)
    minute_rows = 0
    if expired:
        timeout = _with_lock_timeout(conn)
        # The job minute series first, in this transaction: a crash loses neither the month's
        # curve nor its raw rows, and a month rolled up before is skipped.
        for name, month_end in expired:
            minute_rows += roll_up_partition(conn, name, month_end)
        # Batches reaching back before what is kept cannot be checked for double counting
        # any more: the overlap check refuses them from now on (collector/intervals.py).
        record_kept_from(conn, max(month_end for _name, month_end in expired))
        for name, _month_end in expired:
            conn.execute(text(f"DROP TABLE {name}"))
            logger.info("dropped partition %s (its month ended more than %d days ago)", name,
                        retention_days)
        conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": timeout})
    old_default = conn.execute(
        text(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE start_at < :cut"), {"cut": cut}
    ).scalar_one()
    if old_default:
        logger.warning(
            "%d energy_interval rows in %s start before the retention cut %s: left there (no "
            "partition of their month to drop)", old_default, DEFAULT_PARTITION,
            cut.isoformat(timespec="seconds"),
        )
    return RetentionResult(cut=cut, dropped=[name for name, _end in expired],
                           default_rows_before_cut=old_default, minute_rows=minute_rows)
