"""Refused batches, recorded per node (DESIGN.md decision 14: refusal is never silent loss).

Every 4xx answer to ``POST /api/v1/batches`` is counted per (cluster, node) in
``node_refusal`` with the latest status, reason and time, in a transaction of its own (the
refused batch's own transaction is rolled back); ``GET /api/v1/nodes`` lists them. A body that
does not say which node sent it (too large, not JSON) is counted under ``("", "")``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.collector.models import REASON_LEN, NodeRefusal
from jobenergy.collector.sql import dialect_insert
from jobenergy.core.schema import Name

logger = logging.getLogger(__name__)

UNKNOWN_SENDER = ("", "")


class _Sender(BaseModel):
    """The sender's names of a body that failed validation, when they are valid themselves."""

    model_config = ConfigDict(extra="ignore")

    cluster: Name
    node: Name


def sender_of(body: bytes) -> tuple[str, str]:
    """Return ``(cluster, node)`` named by a (refused) batch body, or ``("", "")``."""
    try:
        sender = _Sender.model_validate_json(body)
    except ValidationError:
        return UNKNOWN_SENDER
    return sender.cluster, sender.node


def record_refusal(
    factory: sessionmaker[Session], sender: tuple[str, str], status: int, reason: str
) -> bool:
    """Count one refused batch of ``sender`` with its status and reason; log it.

    Never raises: a database that cannot record it (down, locked) is logged and skipped, so the
    client still gets its 4xx.

    Returns:
        False when the database could not record it.
    """
    cluster, node = sender
    logger.warning("batch refused cluster=%s node=%s status=%s: %s", cluster or "?",
                   node or "?", status, reason)
    now = datetime.now(UTC)
    reason = reason.replace("\x00", "\\x00")[:REASON_LEN]
    conflict = 1 if status == 409 else 0
    try:
        with factory.begin() as session:
            conn = session.connection()
            stmt = dialect_insert(conn)(NodeRefusal)
            new = stmt.excluded
            conn.execute(stmt.values(
                cluster=cluster, node=node, refused=1, conflicts=conflict, first_at=now,
                last_at=now, last_status=status, last_reason=reason,
            ).on_conflict_do_update(
                index_elements=[NodeRefusal.cluster, NodeRefusal.node],
                set_={
                    NodeRefusal.refused: NodeRefusal.refused + 1,
                    NodeRefusal.conflicts: NodeRefusal.conflicts + new.conflicts,
                    NodeRefusal.last_at: new.last_at,
                    NodeRefusal.last_status: new.last_status,
                    NodeRefusal.last_reason: new.last_reason,
                },
            ))
    except sa_exc.SQLAlchemyError as err:
        logger.warning("cannot record the refusal of a batch of cluster=%s node=%s: %s",
                       cluster, node, getattr(err, "orig", err))
        return False
    return True


def refusals(session: Session, cluster: str | None) -> list[dict[str, Any]]:
    """Return the recorded refusals per (cluster, node), of one cluster or all."""
    stmt = select(NodeRefusal).order_by(NodeRefusal.cluster, NodeRefusal.node)
    if cluster is not None:
        stmt = stmt.where(NodeRefusal.cluster == cluster)
    return [
        {
            "cluster": r.cluster, "node": r.node, "refused": r.refused, "conflicts": r.conflicts,
            "first_at": r.first_at, "last_at": r.last_at, "last_status": r.last_status,
            "last_reason": r.last_reason,
        }
        for r in session.scalars(stmt)
    ]
