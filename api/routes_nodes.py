"""``GET /api/v1/nodes``: per node and component totals, for conservation checks, and the
batches the collector refused per node."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from jobenergy.api.access import Access
from jobenergy.api.authenticate import forbidden, get_access
from jobenergy.api.node_reconciliation import node_reconciliation
from jobenergy.api.node_totals import node_totals
from jobenergy.api.routes_jobs import parse_time
from jobenergy.api.schemas import (
    NodeComponentEnergy,
    NodeList,
    NodeReconciliation,
    NodeRefusals,
)
from jobenergy.collector.refusals import refusals
from jobenergy.collector.routes import SessionDep, SessionsClosed

router = APIRouter(prefix="/api/v1", tags=["nodes"], route_class=SessionsClosed)


@router.get("/nodes", response_model=NodeList, summary="Measured vs attributed energy per node")
def get_nodes(session: SessionDep, access: Annotated[Access, Depends(get_access)],
              cluster: str | None = None) -> NodeList:
    """Return measured, unattributed and attributed µJ per node and component, and the
    refused batches per node (count, conflicts, latest status, reason and time).

    For admins, operators and the Slurm hooks (the sync checks conservation and finality
    here): refusal reasons may quote other users' job data.
    """
    if not access.reads_all:
        raise forbidden(access, "read per-node totals and refusals (admins and operators do)")
    return NodeList(
        nodes=[NodeComponentEnergy(**row) for row in node_totals(session, cluster)],
        refusals=[NodeRefusals(**row) for row in refusals(session, cluster)],
    )


@router.get("/nodes/{node}/reconciliation", response_model=NodeReconciliation,
            summary="A node's BMC energy against its RAPL + GPU counters")
def get_node_reconciliation(session: SessionDep,
                            access: Annotated[Access, Depends(get_access)], node: str,
                            cluster: str, start: str, end: str) -> NodeReconciliation:
    """Return the node's BMC energy, RAPL + GPU energy, ``other``, their ratio and the
    flagged intervals (BMC below the counters) for intervals starting in [start, end).

    For admins and operators, as the per-node totals.
    """
    if not access.reads_all:
        raise forbidden(access, "read per-node reconciliation (admins and operators do)")
    ws, we = parse_time(start, "start"), parse_time(end, "end")
    if ws is None or we is None or we <= ws:
        raise HTTPException(status_code=422, detail="start and end must be times, end after start")
    return NodeReconciliation(**node_reconciliation(session, cluster, node, ws, we))
