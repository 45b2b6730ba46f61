"""Which rows ``senergy`` prints, and in which order, as sacct does.

A job is a row, followed by a row per step (``JobID.batch``, ``.extern``, ``.0``, ...) unless
``-X``/``--allocations``: the steps Slurm's accounting lists (the Slurm sync stores them, in
sacct's order), else those the agents measured, in sacct's order (interactive, batch, extern,
numbered). A step row carries the step's energy (``steps`` of the job's JSON: its share of
the job's energy by the steps' CPU time) and prints empty the fields that jobenergy does not
know per step. A job's energy that no step carries (the API's ``outside`` entry) has no row.

``-j`` items select like sacct's: ``1234`` the job (or every task / component of array /
het job 1234) with all its steps; ``1234.batch`` only that step's row (with ``-X``, the
job's row instead).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobenergy.core.slurm_jobids import JobSelector, sacct_job_id, sacct_step_order

#: The API's entry for the energy outside any step (collector/steps.py OUTSIDE_STEP).
OUTSIDE_STEP = "outside"


def display_id(job: dict[str, Any]) -> str:
    """Return the job's id as sacct prints it (the API's, else built from its fields)."""
    return str(job.get("sacct_job_id") or sacct_job_id(
        str(job["job_id"]), job.get("array_job_id"), job.get("array_task_id"),
        job.get("het_job_id"), job.get("het_job_offset")))


def job_order(job: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key: by cluster, then the array / het / raw id numerically, then task or
    component; ids that are not Slurm's numbers after, by text."""
    base = job.get("array_job_id") or job.get("het_job_id") or str(job["job_id"])
    sub = job.get("array_task_id")
    if sub is None:
        sub = job.get("het_job_offset")
    sub = -1 if sub is None else int(sub)
    cluster = job.get("cluster") or ""
    if str(base).isdigit():
        return (cluster, 0, int(base), sub, str(job["job_id"]))
    return (cluster, 1, 0, sub, str(job["job_id"]))


def selects(selector: JobSelector, job: dict[str, Any]) -> bool:
    """True when the ``-j`` item names ``job``."""
    if selector.task is not None:
        return (job.get("array_job_id") == selector.job
                and job.get("array_task_id") == selector.task)
    if selector.offset is not None:
        return (job.get("het_job_id") == selector.job
                and job.get("het_job_offset") == selector.offset)
    return selector.job in (str(job["job_id"]), job.get("array_job_id"), job.get("het_job_id"))


def step_ids(job: dict[str, Any]) -> list[str]:
    """The job's steps: Slurm's list (its order), else the measured ones in sacct's order."""
    listed = [str(s["step"]) for s in job.get("slurm_steps") or [] if s.get("step")]
    if listed:
        return listed
    measured = [str(s["step"]) for s in job.get("steps") or []
                if s.get("step") and s["step"] != OUTSIDE_STEP]
    return sorted(measured, key=sacct_step_order)


def step_row(job: dict[str, Any], step: str) -> dict[str, Any]:
    """Return the row of one step of ``job``: its ids, name and energy (None: unknown)."""
    energy = {str(s["step"]): s for s in job.get("steps") or []}
    names = {str(s["step"]): s.get("name") for s in job.get("slurm_steps") or []}
    measured = any(s != OUTSIDE_STEP for s in energy)
    part = energy.get(step)
    return {
        "step": step,
        "job_id": f"{job['job_id']}.{step}",
        "sacct_job_id": f"{display_id(job)}.{step}",
        "cluster": job.get("cluster"),
        "account": job.get("account"),
        "name": names.get(step) or (step if not step[:1].isdigit() else None),
        # A job with step data: a step without an entry used no CPU time, 0; without any,
        # unknown.
        "energy_uj": part["energy_uj"] if part else (0 if measured else None),
        "by_component": part.get("by_component") if part else {},
        "final": job.get("final", True),
        "quality": {"unmeasured": bool((job.get("quality") or {}).get("unmeasured"))},
    }


def rows(jobs: Iterable[dict[str, Any]], selectors: tuple[JobSelector, ...] | None,
         allocations: bool) -> list[dict[str, Any]]:
    """Return the rows to print for ``jobs`` (sorted here), as sacct prints them."""
    out: list[dict[str, Any]] = []
    for job in sorted(jobs, key=job_order):
        job = {**job, "sacct_job_id": display_id(job)}
        matching = [s for s in selectors or () if selects(s, job)]
        whole = not selectors or any(s.step is None for s in matching)
        if whole or allocations:
            out.append(job)
        if allocations:
            continue
        wanted = None if whole else {s.step for s in matching}
        out.extend(step_row(job, step) for step in step_ids(job)
                   if wanted is None or step in wanted)
    return out
