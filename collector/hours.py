"""Per-job hourly energy and the facility energy and CO2e computed from it.

Raw IT energy is never changed. For each (cluster, job, UTC hour) ``job_energy_hour`` holds the
IT µJ, the PUE and carbon intensity in force over that hour (see ``collector/factors.py``) and
``facility_uj = round(it_uj × PUE)``, ``co2e_ug = round(facility_uj × I / 3.6e6)``. A job's
``facility_uj``/``co2e_ug`` summary is the sum of its hours, so a time-varying intensity is
weighted by each hour's energy, and a corrected factor recomputes the hours it covers.

Ingest locks the job rows first (the job upsert), so two batches of one job never update its
hours concurrently.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from jobenergy.collector import factor_changes
from jobenergy.collector.factors import ClusterFactors, hours_span, load_factors
from jobenergy.collector.models import Job, JobEnergyHour
from jobenergy.collector.sql import dialect_insert
from jobenergy.core.carbon import HOUR, co2e_ug, facility_uj, hour_floor

logger = logging.getLogger(__name__)

_H = JobEnergyHour


def _values(energy_uj: int, factors: ClusterFactors, hour: datetime) -> dict[str, object]:
    f = factors.at_hour(hour)
    facility = facility_uj(energy_uj, f.pue)
    return {
        "energy_uj": energy_uj, "facility_uj": facility,
        "co2e_ug": co2e_ug(facility, f.carbon_g_per_kwh), "pue": f.pue,
        "carbon_g_per_kwh": f.carbon_g_per_kwh, "pue_source": f.pue_source,
        "carbon_source": f.carbon_source,
    }


def write_hours(
    conn: Connection, cluster: str, job_hours: dict[tuple[str, datetime], int]
) -> dict[str, tuple[int, int]]:
    """Add a batch's per-(job, hour) µJ to ``job_energy_hour``; recompute those hours' values.

    The caller holds the jobs' row locks. Returns, per job, the change of its facility µJ and
    CO2e µg, for the job summary.
    """
    if not job_hours:
        return {}
    job_ids = sorted({job_id for job_id, _ in job_hours})
    first, end = hours_span(hour for _, hour in job_hours)
    factors = load_factors(conn, cluster, first, end)
    old = {
        (job_id, hour): (energy, facility, co2e)
        for job_id, hour, energy, facility, co2e in conn.execute(
            select(_H.job_id, _H.hour_at, _H.energy_uj, _H.facility_uj, _H.co2e_ug).where(
                _H.cluster == cluster, _H.job_id.in_(job_ids), _H.hour_at >= first,
                _H.hour_at < end,
            )
        )
    }
    deltas: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rows = []
    for (job_id, hour), added_uj in sorted(job_hours.items()):
        before = old.get((job_id, hour), (0, 0, 0))
        row = _values(before[0] + added_uj, factors, hour)
        delta = deltas[job_id]
        delta[0] += row["facility_uj"] - before[1]  # type: ignore[operator]
        delta[1] += row["co2e_ug"] - before[2]  # type: ignore[operator]
        rows.append({"cluster": cluster, "job_id": job_id, "hour_at": hour, **row})
    conn.execute(_hours_upsert(conn.dialect.name), rows)
    return {job_id: (d[0], d[1]) for job_id, d in deltas.items()}


@cache
def _hours_upsert(dialect: str) -> Any:
    """The hours' upsert, built once per dialect (building costs more than executing)."""
    stmt = dialect_insert(dialect)(JobEnergyHour)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[_H.cluster, _H.job_id, _H.hour_at],
        set_={
            _H.energy_uj: new.energy_uj, _H.facility_uj: new.facility_uj,
            _H.co2e_ug: new.co2e_ug, _H.pue: new.pue,
            _H.carbon_g_per_kwh: new.carbon_g_per_kwh, _H.pue_source: new.pue_source,
            _H.carbon_source: new.carbon_source,
        },
    )


def refresh_job_totals(conn: Connection, cluster: str, job_ids: list[str]) -> None:
    """Set the jobs' ``facility_uj``/``co2e_ug`` summary to the sum of their hours."""
    for i in range(0, len(job_ids), 1000):
        chunk = job_ids[i : i + 1000]
        sums = conn.execute(
            select(_H.job_id, func.sum(_H.facility_uj), func.sum(_H.co2e_ug))
            .where(_H.cluster == cluster, _H.job_id.in_(chunk))
            .group_by(_H.job_id)
        ).all()
        if not sums:
            continue
        conn.execute(
            update(Job)
            .where(Job.cluster == cluster, Job.job_id == bindparam("b_job_id"))
            # updated_at: the leaderboard roll-up recomputes the days of changed jobs;
            # parts_version: the factor groups changed (collector/job_details.py).
            .values(facility_uj=bindparam("b_facility"), co2e_ug=bindparam("b_co2e"),
                    updated_at=datetime.now(UTC), parts_version=Job.parts_version + 1),
            [
                {"b_job_id": job_id, "b_facility": int(facility), "b_co2e": int(co2e)}
                for job_id, facility, co2e in sums
            ],
        )


def recompute(
    conn: Connection, cluster: str, start: datetime | None = None, end: datetime | None = None
) -> int:
    """Recompute the hours of ``cluster`` in ``[start, end)`` (None: unbounded) and their jobs.

    Runs in the caller's transaction, so a factor change and its effect commit together;
    when values changed, the rewritten hours are recorded as a new factor revision
    (``collector/factor_changes.py``) for the copies outside the database (AdminComment).

    Returns:
        The number of hours whose values changed.
    """
    where = [_H.cluster == cluster]
    if start is not None:
        where.append(_H.hour_at >= hour_floor(start))
    if end is not None:
        where.append(_H.hour_at < end)
    span = conn.execute(select(func.min(_H.hour_at), func.max(_H.hour_at)).where(*where)).one()
    if span[0] is None:
        return 0
    factors = load_factors(conn, cluster, span[0], span[1] + HOUR)
    changed = []
    jobs: set[str] = set()
    stmt = select(
        _H.job_id, _H.hour_at, _H.energy_uj, _H.facility_uj, _H.co2e_ug, _H.pue,
        _H.carbon_g_per_kwh, _H.pue_source, _H.carbon_source,
    ).where(*where)
    for job_id, hour, energy, *current in conn.execute(stmt):
        row = _values(energy, factors, hour)
        if tuple(current) != tuple(row[k] for k in list(row)[1:]):
            changed.append(
                {"b_job_id": job_id, "b_hour_at": hour, **{f"b_{k}": v for k, v in row.items()}}
            )
            jobs.add(job_id)
    if changed:
        conn.execute(
            update(JobEnergyHour)
            .where(
                _H.cluster == cluster, _H.job_id == bindparam("b_job_id"),
                _H.hour_at == bindparam("b_hour_at"),
            )
            .values(
                {
                    name: bindparam(f"b_{name}")
                    for name in ("facility_uj", "co2e_ug", "pue", "carbon_g_per_kwh",
                                 "pue_source", "carbon_source")
                }
            ),
            [{k: v for k, v in row.items() if k != "b_energy_uj"} for row in changed],
        )
        refresh_job_totals(conn, cluster, sorted(jobs))
        factor_changes.record(conn, cluster, (row["b_hour_at"] for row in changed), len(jobs))
    logger.info("recomputed factors cluster=%s hours=%s jobs=%s", cluster, len(changed), len(jobs))
    return len(changed)
