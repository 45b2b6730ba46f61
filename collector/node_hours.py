"""Per-node hourly energy (``node_energy_hour``): added to at ingest, rebuilt from raw intervals.

Each hour holds, per (cluster, node, component), the measured µJ and the node's unattributed
part. Ingest splits every share it stores (each job's, the node's own) over the UTC hours it
overlaps by largest remainder (:func:`jobenergy.core.carbon.split_over_hours`, as for
``job_energy_hour``; ``collector/plan.py``), sums them per component and hour in Python and
upserts the batch's few rows (a 10-s batch touches one or two hours) in its transaction,
under the node's lock: no other writer has these rows. So the hours of a node add up to its
``node_energy`` totals exactly, and a series of whole hours read from them equals the one the
raw intervals give (``api/series_queries.py``), after the raw intervals are gone too
(retention drops them, never these).

:func:`backfill` rebuilds the hours of the nodes from their stored intervals (migration
``0015_node_energy_hour``; the series benchmark's history): per node, one GROUP BY of the rows
lying inside one hour in SQL, and the few rows crossing an hour edge (a 10-s agent: one per
source and share in 360) split in Python by the same function, one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from jobenergy.collector.models import NodeEnergyHour, UtcDateTime
from jobenergy.collector.sql import dialect_insert
from jobenergy.core.carbon import split_over_hours

logger = logging.getLogger(__name__)

_H = NodeEnergyHour


def add_node_hours(conn: Connection,
                   parts: Sequence[tuple[str, str, dict[tuple[str, datetime], list[int]]]]
                   ) -> None:
    """Add batches' per-(component, hour) ``[measured, unattributed]`` µJ to their nodes'
    hours; ``parts`` holds ``(cluster, node, hours)`` of distinct nodes.

    The caller holds the nodes' locks (``collector/sql.py: lock_for_ingest``).
    """
    rows = [
        {"cluster": cluster, "node": node, "hour_at": hour, "component": component,
         "measured_uj": measured, "unattributed_uj": unattributed}
        for cluster, node, node_hours in sorted(parts, key=lambda part: part[:2])
        for (component, hour), (measured, unattributed) in sorted(node_hours.items())
    ]
    if rows:
        conn.execute(_node_hours_upsert(conn.dialect.name), rows)


@cache
def _node_hours_upsert(dialect: str) -> Any:
    """The upsert, built once per dialect (building costs more than executing)."""
    stmt = dialect_insert(dialect)(NodeEnergyHour)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[_H.cluster, _H.node, _H.hour_at, _H.component],
        set_={
            _H.measured_uj: _H.measured_uj + new.measured_uj,
            _H.unattributed_uj: _H.unattributed_uj + new.unattributed_uj,
        },
    )


# ---------------------------------------------------------------------------------------------
# Backfill from energy_interval (raw SQL on the tables as of revision 0015, so that the
# migration keeps working whatever the models become).

#: Per dialect: the UTC hour holding ``start_at``, and the end of that hour.
_HOUR_SQL = {
    "postgresql": ("date_trunc('hour', start_at AT TIME ZONE 'UTC')",
                   "(date_trunc('hour', start_at AT TIME ZONE 'UTC') + interval '1 hour') "
                   "AT TIME ZONE 'UTC'"),
    # Stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (collector/models.py), which
    # sorts as time does. The hour is cut from the text: strftime() would round the
    # fraction of a second (10:59:59.9996 is 11:00 to it).
    "sqlite": ("substr(start_at, 1, 13) || ':00:00.000000'",
               "strftime('%Y-%m-%d %H:00:00.000000', substr(start_at, 1, 13) || ':00:00', "
               "'+1 hour')"),
}

_INSIDE_SQL = """
SELECT component, {hour} AS hour_at, SUM(energy_uj) AS measured_uj,
       SUM(CASE WHEN job_id IS NULL THEN energy_uj ELSE 0 END) AS unattributed_uj
FROM energy_interval
WHERE cluster = :cluster AND node = :node AND end_at <= {next_hour}
GROUP BY component, {hour}
"""

_CROSSING_SQL = """
SELECT component, job_id IS NULL AS unattributed, start_at, end_at, energy_uj
FROM energy_interval
WHERE cluster = :cluster AND node = :node AND end_at > {next_hour}
"""

_TABLE = sa.table(
    "node_energy_hour", sa.column("cluster"), sa.column("node"),
    sa.column("hour_at", UtcDateTime()), sa.column("component"), sa.column("measured_uj"),
    sa.column("unattributed_uj"),
)

#: Rows per INSERT of a backfill.
_CHUNK = 5000


def _utc(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite through a text() query
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def node_hours_from_intervals(conn: Connection, cluster: str, node: str
                              ) -> dict[tuple[str, datetime], list[int]]:
    """Return the node's ``(component, hour) -> [measured, unattributed]`` from its stored
    intervals, split as ingest splits them."""
    hour, next_hour = _HOUR_SQL[conn.dialect.name]
    params = {"cluster": cluster, "node": node}
    hours: dict[tuple[str, datetime], list[int]] = {}
    inside = sa.text(_INSIDE_SQL.format(hour=hour, next_hour=next_hour))
    for component, hour_at, measured, unattributed in conn.execute(inside, params):
        hours[(component, _utc(hour_at))] = [int(measured), int(unattributed)]
    crossing = sa.text(_CROSSING_SQL.format(next_hour=next_hour))
    for component, own, start_at, end_at, energy_uj in conn.execute(crossing, params):
        for hour_at, part in split_over_hours(_utc(start_at), _utc(end_at),
                                              int(energy_uj)).items():
            acc = hours.setdefault((component, hour_at), [0, 0])
            acc[0] += part
            if own:
                acc[1] += part
    return hours


def backfill(conn: Connection) -> int:
    """Fill ``node_energy_hour`` (empty) from ``energy_interval``, node by node.

    Covers what the raw intervals still hold: hours of intervals dropped by retention before
    this ran cannot be rebuilt (``node_energy`` keeps their totals).

    Returns:
        The hourly rows written.
    """
    nodes = conn.execute(sa.text(
        "SELECT DISTINCT cluster, node FROM node_energy ORDER BY cluster, node")).all()
    written = 0
    for cluster, node in nodes:
        rows = [
            {"cluster": cluster, "node": node, "hour_at": hour_at, "component": component,
             "measured_uj": measured, "unattributed_uj": unattributed}
            for (component, hour_at), (measured, unattributed)
            in sorted(node_hours_from_intervals(conn, cluster, node).items())
        ]
        for i in range(0, len(rows), _CHUNK):
            conn.execute(_TABLE.insert(), rows[i:i + _CHUNK])
        written += len(rows)
        logger.info("node hours backfilled cluster=%s node=%s hours=%s", cluster, node,
                    len(rows))
    return written
