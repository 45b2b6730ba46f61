"""``GET /api/v1/whoami`` (who the server thinks you are) and ``GET /api/v1/audit`` (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from jobenergy.api.access import Access
from jobenergy.api.authenticate import forbidden, get_access
from jobenergy.collector import audit
from jobenergy.collector.routes import SessionDep, SessionsClosed

router = APIRouter(prefix="/api/v1", tags=["access"], route_class=SessionsClosed)

AccessDep = Annotated[Access, Depends(get_access)]


class WhoAmI(BaseModel):
    """The caller as authenticated and the rights it has."""

    identity: str
    mechanism: str
    user: str | None
    uid: int | None
    admin: bool
    reads_all: bool
    posts_events: bool
    agent_nodes: list[str] | None
    coordinator_accounts: list[str]
    private_data: list[str]


class AuditEntry(BaseModel):
    """One privileged change."""

    id: int
    at: datetime
    actor: str
    action: str
    cluster: str | None
    old_value: dict[str, Any] | None
    new_value: dict[str, Any] | None


@router.get("/whoami", response_model=WhoAmI, summary="Who the server takes the caller for")
def whoami(access: AccessDep) -> WhoAmI:
    """Return the caller's identity and roles (to debug a 401/403)."""
    caller = access.caller
    nodes = None if access.agent_nodes is None else sorted(
        f"{cluster}/{node}" if cluster else node for cluster, node in access.agent_nodes)
    return WhoAmI(
        identity=caller.describe(), mechanism=caller.mechanism, user=caller.user,
        uid=caller.uid, admin=access.admin, reads_all=access.reads_all,
        posts_events=access.service, agent_nodes=nodes,
        coordinator_accounts=sorted(access.visible.accounts),
        private_data=list(access.private_data),
    )


@router.get("/audit", response_model=list[AuditEntry], summary="Privileged changes (admins)")
def get_audit(
    access: AccessDep,
    session: SessionDep,
    cluster: str | None = None,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[AuditEntry]:
    """Return the audit log after entry ``after``, oldest first."""
    if not access.admin:
        raise forbidden(access, "read the audit log")
    rows = audit.entries(session.connection(), cluster=cluster, after_id=after, limit=limit)
    return [AuditEntry(**row) for row in rows]
