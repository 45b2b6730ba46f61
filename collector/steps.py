"""Energy per Slurm job step: each interval's job energy split over the job's steps.

The agent sends, per job and interval, the CPU time of each step cgroup (``JobSample.
step_cpu_us``). Here, for every interval and job with step CPU time (sum > 0), the job's
energy in that interval for each component (the sum of ``jobs_uj[job]`` over the interval's
sources of that component) is split over the steps in proportion to their CPU time
(:mod:`jobenergy.core.steps`: largest remainder, so the steps add up to the job's energy of
that interval exactly). A stored interval that merges sampled ones in which several steps
were busy carries the agent's split, made by the same rule per sampled interval
(``JobSample.step_uj``, checked by the wire model: never more than the job's energy of the
component): it is stored as sent. Intervals without step CPU time (an old agent, a job whose
steps used no CPU, a job that ended) add to no step: the job view shows that rest as the step
:data:`OUTSIDE_STEP` (job − Σ steps per component, computed when read, never stored). The
per-(job, step, component) sums of a batch are upserted once into ``job_step_energy``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection

from jobenergy.collector.models import JobStepEnergy
from jobenergy.collector.sql import dialect_insert
from jobenergy.core.schema import Batch
from jobenergy.core.steps import (
    OUTSIDE_STEP,
    job_energy_by_component,
    split_over_steps,
    step_sort_key,
)

__all__ = ["OUTSIDE_STEP", "plan_steps", "step_sort_key", "write_steps"]

_S = JobStepEnergy


def plan_steps(batch: Batch) -> dict[tuple[str, str, str], int]:
    """Return the batch's energy per (job_id, step, component), µJ."""
    totals: dict[tuple[str, str, str], int] = {}
    for interval in batch.intervals:
        # One sample per job (a job listed twice: the last one, as the shares count once).
        for sample in {s.job_id: s for s in interval.jobs}.values():
            if sample.step_uj is not None:
                split = sample.step_uj
            elif sum(sample.step_cpu_us.values()) > 0:
                split = split_over_steps(
                    job_energy_by_component(
                        ((s.component, s.jobs_uj) for s in interval.sources), sample.job_id),
                    sample.step_cpu_us)
            else:
                continue
            for component, parts in split.items():
                for step, part in parts.items():
                    key = (sample.job_id, step, component)
                    totals[key] = totals.get(key, 0) + part
    return totals


def write_steps(conn: Connection, cluster: str, totals: dict[tuple[str, str, str], int]) -> None:
    """Upsert a batch's per-step totals (from :func:`plan_steps`) into ``job_step_energy``."""
    if not totals:
        return
    conn.execute(
        _steps_upsert(conn.dialect.name),
        [
            {"cluster": cluster, "job_id": job_id, "step": step, "component": component,
             "energy_uj": energy_uj}
            for (job_id, step, component), energy_uj in sorted(totals.items())
        ],
    )


@cache
def _steps_upsert(dialect: str) -> Any:
    """The upsert, built once per dialect (building costs more than executing)."""
    stmt = dialect_insert(dialect)(JobStepEnergy)
    return stmt.on_conflict_do_update(
        index_elements=[_S.cluster, _S.job_id, _S.step, _S.component],
        set_={_S.energy_uj: _S.energy_uj + stmt.excluded.energy_uj},
    )
