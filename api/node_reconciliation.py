"""A node's BMC reconciliation over a period (``GET /api/v1/nodes/{node}/reconciliation``).

Summed from the stored intervals that start in ``[start, end)`` (the index on ``cluster,
node, start_at`` bounds the scan to the window; intervals past the retention period are
gone, so the period must lie within it). Per component every row of an interval (each job's
share and the node's own) adds up to the measured energy (conservation), so the sums are:

* ``bmc_uj``: the BMC's energy (sources ``bmc`` and ``bmc/flagged``);
* ``measured_uj``: cpu + dram + gpu (RAPL packages, DRAM, GPUs);
* ``other_uj``: the BMC's energy beyond them, attributed to jobs (agent/reconcile.py);
* ``flagged_intervals``: stored intervals carrying a BMC window whose figure was below the
  measured sum (nothing was taken from the jobs there).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from jobenergy.collector.models import EnergyInterval
from jobenergy.core.units import uj_to_kwh

FLAGGED_SOURCE = "bmc/flagged"  # agent/reconcile.py


def node_reconciliation(session: Session, cluster: str, node: str, start: datetime,
                        end: datetime) -> dict[str, Any]:
    """Return the node's BMC, measured and other energy and flagged intervals in the period."""
    ei = EnergyInterval
    window = (ei.cluster == cluster, ei.node == node, ei.start_at >= start, ei.start_at < end)
    per_component = dict(
        session.execute(select(ei.component, func.sum(ei.energy_uj))
                        .where(*window).group_by(ei.component)).all()
    )
    flagged = session.execute(
        select(func.count(distinct(ei.start_at))).where(*window, ei.source == FLAGGED_SOURCE)
    ).scalar_one()
    bmc_uj = int(per_component.get("bmc") or 0)
    measured_uj = sum(int(per_component.get(c) or 0) for c in ("cpu", "dram", "gpu"))
    other_uj = int(per_component.get("other") or 0)
    return {
        "cluster": cluster,
        "node": node,
        "start": start,
        "end": end,
        "bmc_uj": bmc_uj,
        "bmc_kwh": uj_to_kwh(bmc_uj),
        "measured_uj": measured_uj,
        "measured_kwh": uj_to_kwh(measured_uj),
        "other_uj": other_uj,
        "other_kwh": uj_to_kwh(other_uj),
        "ratio": bmc_uj / measured_uj if measured_uj and bmc_uj else None,
        "flagged_intervals": int(flagged),
        "covered": bmc_uj > 0 or flagged > 0,
    }
