"""Energy per Slurm job step: each interval's job energy split over the job's steps.

The agent sends, per job and interval, the CPU time of each step cgroup (``JobSample.
step_cpu_us``); it never splits energy itself. Here, for every interval and job with step CPU
time (sum > 0), the job's energy in that interval for each component (the sum of
``jobs_uj[job]`` over the interval's sources of that component) is split over the steps in
proportion to their CPU time with :func:`jobenergy.core.split.split_uj` (largest remainder),
so the steps add up to the job's energy of that interval exactly. Intervals without step CPU
time (an old agent, a job whose steps used no CPU, a job that ended) add to no step: the job
view shows that rest as the step :data:`OUTSIDE_STEP` (job − Σ steps per component, computed
when read, never stored). The per-(job, step, component) sums of a batch are upserted once into
``job_step_energy``.
"""

from __future__ import annotations

from sqlalchemy import Connection

from jobenergy.collector.models import JobStepEnergy
from jobenergy.collector.sql import dialect_insert
from jobenergy.core.schema import Batch
from jobenergy.core.split import split_uj

_S = JobStepEnergy
_NAMED_STEPS = {"batch": 0, "extern": 1, "interactive": 2}
#: The job view's entry for the job's energy that no step carries (not a Slurm step name).
OUTSIDE_STEP = "outside"


def step_sort_key(step: str) -> tuple[int, int, str]:
    """Order steps as Slurm lists them: batch, extern, interactive, numbered steps ascending,
    then any other name (heterogeneous ``0+1``, pending ...) alphabetically, then
    :data:`OUTSIDE_STEP`."""
    if step in _NAMED_STEPS:
        return (0, _NAMED_STEPS[step], "")
    if step.isdigit():
        return (1, int(step), "")
    if step == OUTSIDE_STEP:
        return (3, 0, "")
    return (2, 0, step)


def plan_steps(batch: Batch) -> dict[tuple[str, str, str], int]:
    """Return the batch's energy per (job_id, step, component), µJ."""
    totals: dict[tuple[str, str, str], int] = {}
    for interval in batch.intervals:
        weights_of = {
            sample.job_id: {
                step: sample.step_cpu_us[step]
                for step in sorted(sample.step_cpu_us, key=step_sort_key)
            }
            for sample in interval.jobs
            if sum(sample.step_cpu_us.values()) > 0
        }
        if not weights_of:
            continue
        job_uj: dict[tuple[str, str], int] = {}
        for src in interval.sources:
            for job_id, energy_uj in src.jobs_uj.items():
                if job_id in weights_of:
                    key = (job_id, src.component)
                    job_uj[key] = job_uj.get(key, 0) + energy_uj
        for (job_id, component), energy_uj in job_uj.items():
            for step, part in split_uj(energy_uj, weights_of[job_id]).items():
                key = (job_id, step, component)
                totals[key] = totals.get(key, 0) + part
    return totals


def write_steps(conn: Connection, cluster: str, totals: dict[tuple[str, str, str], int]) -> None:
    """Upsert a batch's per-step totals (from :func:`plan_steps`) into ``job_step_energy``."""
    if not totals:
        return
    stmt = dialect_insert(conn)(JobStepEnergy)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_S.cluster, _S.job_id, _S.step, _S.component],
        set_={_S.energy_uj: _S.energy_uj + stmt.excluded.energy_uj},
    )
    conn.execute(
        stmt,
        [
            {"cluster": cluster, "job_id": job_id, "step": step, "component": component,
             "energy_uj": energy_uj}
            for (job_id, step, component), energy_uj in sorted(totals.items())
        ],
    )
