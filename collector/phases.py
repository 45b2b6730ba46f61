"""Energy per job × announced phase × model, and the closed phase records' samples and metrics.

Energy comes from the intervals whose ``JobSample.phase`` is set (the job's µJ over every
source); samples add up over the closed ``PhaseRecord``s of that phase and model; metrics and
tags are merged, a later record winning; GPU-seconds add up like the job's (each GPU source
with a share of the job, for the interval's duration). The caller holds the jobs' row locks
(ingest), so the read-merge-write of metrics cannot race.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, case, func, select, tuple_

from jobenergy.collector.models import JobPhase
from jobenergy.collector.plan import Plan
from jobenergy.collector.sql import dialect_insert, least_greatest

_P = JobPhase


def write_phases(conn: Connection, cluster: str, plan: Plan) -> None:
    """Upsert the batch's phase energy and phase records into ``job_phase``."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (job_id, phase, model), (energy, intervals, first, last, gpu_s) in (
        plan.phase_energy.items()
    ):
        rows[(job_id, phase, model)] = {
            "energy_uj": energy, "intervals": intervals, "first_at": first, "last_at": last,
            "samples": None, "records": 0, "metrics": None, "tags": None, "gpu_s": gpu_s,
        }
    keys = sorted({*rows, *((r.job_id, r.phase, r.model or "") for r in plan.phase_records)})
    if not keys:
        return
    # Every key's stored metrics and tags (ingest holds the job locks): merged here, written back.
    merged: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, Any]]] = {
        (job_id, phase, model): (dict(metrics or {}), dict(tags or {}))
        for job_id, phase, model, metrics, tags in conn.execute(
            select(_P.job_id, _P.phase, _P.model, _P.metrics, _P.tags).where(
                _P.cluster == cluster, tuple_(_P.job_id, _P.phase, _P.model).in_(keys)
            )
        )
    }
    for record in plan.phase_records:
        key = (record.job_id, record.phase, record.model or "")
        row = rows.setdefault(key, {
            "energy_uj": 0, "intervals": 0, "first_at": record.start, "last_at": record.end,
            "samples": None, "records": 0, "metrics": None, "tags": None, "gpu_s": 0.0,
        })
        row["records"] += 1
        if record.samples is not None:
            row["samples"] = (row["samples"] or 0) + record.samples
        metrics, tags = merged.setdefault(key, ({}, {}))
        metrics.update(record.metrics)
        tags.update(record.tags)
    for key, row in rows.items():
        row["metrics"], row["tags"] = merged.get(key, ({}, {}))
    conn.execute(
        _phases_upsert(conn.dialect.name),
        [
            {"cluster": cluster, "job_id": job_id, "phase": phase, "model": model, **row}
            for (job_id, phase, model), row in sorted(rows.items())
        ],
    )


@cache
def _phases_upsert(dialect: str) -> Any:
    """The upsert, built once per dialect (building costs more than executing)."""
    least, greatest = least_greatest(dialect)
    stmt = dialect_insert(dialect)(JobPhase)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[_P.cluster, _P.job_id, _P.phase, _P.model],
        set_={
            _P.energy_uj: _P.energy_uj + new.energy_uj,
            _P.intervals: _P.intervals + new.intervals,
            _P.gpu_s: _P.gpu_s + new.gpu_s,
            _P.records: _P.records + new.records,
            _P.samples: case(
                (new.samples.is_(None), _P.samples),
                else_=func.coalesce(_P.samples, 0) + new.samples,
            ),
            _P.metrics: new.metrics,
            _P.tags: new.tags,
            _P.first_at: least(func.coalesce(_P.first_at, new.first_at), new.first_at),
            _P.last_at: greatest(func.coalesce(_P.last_at, new.last_at), new.last_at),
        },
    )
