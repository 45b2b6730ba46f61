"""Factor revisions: which stored job values a PUE/carbon change rewrote.

Facility energy and CO2e are recomputed when a cluster's factors change (``hours.py:
recompute``), but copies of them live outside the database too: the AdminComment that
``jobenergy slurm sync`` writes into Slurm's accounting. So that those copies can follow,
every recomputation that changed stored values records, in the same transaction, a
``factor_change`` row: a revision number and the span of hours it rewrote. The Slurm sync
remembers the last revision it handled per cluster, asks for the changes after it
(``GET /api/v1/clusters/{c}/factor-changes?after=N``) and re-syncs the jobs of those spans.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select

from jobenergy.collector.factors import hours_span
from jobenergy.collector.models import FactorChange

_C = FactorChange


def record(conn: Connection, cluster: str, hours: Iterable[datetime], jobs: int) -> None:
    """Record that the values of ``hours`` (of ``jobs`` jobs) were rewritten; none: no-op."""
    changed = list(hours)
    if not changed:
        return
    start, end = hours_span(changed)
    conn.execute(insert(FactorChange).values(
        cluster=cluster, start_at=start, end_at=end, hours=len(changed), jobs=jobs,
        changed_at=datetime.now(UTC),
    ))


def revision(conn: Connection, cluster: str) -> int:
    """Return the cluster's latest factor revision (0: its values were never rewritten)."""
    return int(conn.scalar(select(func.max(_C.revision)).where(_C.cluster == cluster)) or 0)


def changes_after(conn: Connection, cluster: str, after: int, limit: int) -> list[dict[str, Any]]:
    """Return up to ``limit`` of the cluster's changes with a revision above ``after``, oldest
    first (an index range read: cost grows with the changes returned, not with history)."""
    rows = conn.execute(
        select(_C.revision, _C.start_at, _C.end_at, _C.hours, _C.jobs, _C.changed_at)
        .where(_C.cluster == cluster, _C.revision > after)
        .order_by(_C.revision)
        .limit(limit)
    )
    return [
        {"revision": rev, "start": start, "end": end, "hours": hours, "jobs": jobs,
         "changed_at": at}
        for rev, start, end, hours, jobs, at in rows
    ]
