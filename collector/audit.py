"""The audit log: every privileged change, who made it, when, the old and the new value.

Written in the same transaction as the change it records, so one never exists without the
other. Read by admins at ``GET /api/v1/audit``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from jobenergy.collector.models import NAME_LEN, AuditLog


def record(conn: Connection, actor: str, action: str, cluster: str | None,
           old_value: dict[str, Any] | None, new_value: dict[str, Any] | None) -> None:
    """Append one entry."""
    conn.execute(AuditLog.__table__.insert().values(
        at=datetime.now(UTC), actor=actor[:NAME_LEN], action=action, cluster=cluster,
        old_value=old_value, new_value=new_value))


def entries(conn: Connection, *, cluster: str | None = None, after_id: int = 0,
            limit: int = 1000) -> list[dict[str, Any]]:
    """Return entries with an id above ``after_id``, oldest first."""
    table = AuditLog.__table__
    stmt = select(table).where(table.c.id > after_id).order_by(table.c.id).limit(limit)
    if cluster is not None:
        stmt = stmt.where(table.c.cluster == cluster)
    return [dict(row._mapping) for row in conn.execute(stmt)]
