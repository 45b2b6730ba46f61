"""Per-node energy totals (``GET /api/v1/nodes``): GROUP BY over the ``node_energy`` and
``job_energy`` totals maintained at ingest."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from jobenergy.collector.models import JobEnergy, NodeEnergy


def node_totals(session: Session, cluster: str | None) -> list[dict[str, Any]]:
    """Return per (cluster, node, component) measured, unattributed and attributed µJ."""
    ne, je = NodeEnergy, JobEnergy
    measured = (
        select(
            ne.cluster, ne.node, ne.component,
            func.sum(ne.measured_uj).label("measured_uj"),
            func.sum(ne.unattributed_uj).label("unattributed_uj"),
            func.sum(ne.intervals).label("intervals"),
            func.min(ne.first_at).label("first_at"),
            func.max(ne.last_at).label("last_at"),
        )
        .group_by(ne.cluster, ne.node, ne.component)
    )
    attributed = (
        select(je.cluster, je.node, je.component, func.sum(je.energy_uj).label("attributed_uj"))
        .group_by(je.cluster, je.node, je.component)
    )
    if cluster is not None:
        measured = measured.where(ne.cluster == cluster)
        attributed = attributed.where(je.cluster == cluster)
    m, a = measured.subquery(), attributed.subquery()
    stmt = (
        select(
            m.c.cluster, m.c.node, m.c.component, m.c.measured_uj, m.c.unattributed_uj,
            func.coalesce(a.c.attributed_uj, 0), m.c.intervals, m.c.first_at, m.c.last_at,
        )
        .outerjoin(
            a,
            and_(a.c.cluster == m.c.cluster, a.c.node == m.c.node, a.c.component == m.c.component),
        )
        .order_by(m.c.cluster, m.c.node, m.c.component)
    )
    keys = ("cluster", "node", "component", "measured_uj", "unattributed_uj", "attributed_uj",
            "intervals", "first_at", "last_at")
    out = []
    for row in session.execute(stmt):
        item = dict(zip(keys, row, strict=True))
        for key in ("measured_uj", "unattributed_uj", "attributed_uj", "intervals"):
            item[key] = int(item[key])
        out.append(item)
    return out
