"""A job's energy split over its Slurm steps: one rule for the agent and the collector.

Per interval and component, a job's energy (the sum of its shares of that component's
sources) is split over its steps in proportion to each step cgroup's CPU time in the interval,
by largest remainder (:func:`jobenergy.core.split.split_uj`), steps in Slurm's order, so the
parts add up to the job's energy exactly. An interval without step CPU time splits nothing:
that energy is in no step (the job view's ``outside``).

The collector applies this to every stored interval that does not carry the split itself
(``JobSample.step_uj``). The agent applies it to each sampled interval before merging
intervals in which several steps were busy, and sends the sums, so that storing an interval
per ``store_interval_s`` gives every step the energy that storing each sample would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jobenergy.core.split import split_uj

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


def job_energy_by_component(
    shares: Iterable[tuple[str, Mapping[str, int]]], job_id: str
) -> dict[str, int]:
    """Return a job's energy per component in one interval: its shares summed (µJ).

    ``shares``: each source of the interval as ``(component, jobs_uj)``. A component appears
    when the job has a share (even 0) in one of its sources.
    """
    out: dict[str, int] = {}
    for component, jobs_uj in shares:
        energy_uj = jobs_uj.get(job_id)
        if energy_uj is not None:
            out[component] = out.get(component, 0) + energy_uj
    return out


def split_over_steps(
    energy_by_component: Mapping[str, int], step_cpu_us: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """Return ``{component: {step: µJ}}``: each component's energy split by step CPU time.

    Empty when the steps used no CPU time (the energy is in no step). Every step listed gets
    an entry (0 for a step without CPU time), as the collector has always stored them.
    """
    if sum(step_cpu_us.values()) <= 0:
        return {}
    weights = {step: step_cpu_us[step] for step in sorted(step_cpu_us, key=step_sort_key)}
    return {
        component: split_uj(energy_uj, weights)
        for component, energy_uj in energy_by_component.items()
    }


def check_step_split(
    job_id: str,
    step_uj: Mapping[str, Mapping[str, int]],
    step_cpu_us: Mapping[str, int],
    energy_by_component: Mapping[str, int],
) -> None:
    """Refuse a split that gives a job's steps energy they cannot have.

    Each step of the split is one the job sample lists CPU time for (``step_cpu_us``), and
    gets energy only if it used CPU time; :data:`OUTSIDE_STEP` is never a step. Per
    component, the parts add up to at most the job's energy of that component in the
    interval (the rest is in no step); a component the job has no share of carries none.

    Raises:
        ValueError: Which job, component and step, and the figures.
    """
    for component, parts in step_uj.items():
        for step, energy_uj in parts.items():
            if step == OUTSIDE_STEP:
                raise ValueError(f"job {job_id}: {OUTSIDE_STEP!r} is not a Slurm step")
            cpu_us = step_cpu_us.get(step)
            if cpu_us is None:
                raise ValueError(
                    f"job {job_id}: step {step!r} has energy but no CPU time listed")
            if energy_uj and not cpu_us:
                raise ValueError(
                    f"job {job_id}: step {step!r} gets {energy_uj} µJ of {component} but used "
                    "no CPU time")
        have_uj = energy_by_component.get(component)
        if have_uj is None:
            if parts:
                raise ValueError(
                    f"job {job_id}: step energy for {component} without a share of any "
                    f"{component} source in the interval")
            continue
        total_uj = sum(parts.values())
        if total_uj > have_uj:
            raise ValueError(
                f"job {job_id}: its steps get {total_uj} µJ of {component}, more than the "
                f"job's {have_uj} µJ in the interval")
