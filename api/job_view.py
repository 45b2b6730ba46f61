"""A job's JSON (:class:`~jobenergy.api.schemas.JobOut`) from what a lookup or a page read.

The lookup and the lists read a job's row with its per-source totals, factor groups, phases,
per-step energy, the nodes its agents saw and their high-water marks
(:class:`~jobenergy.api.job_lookup.JobDetail`); this builds the answer from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jobenergy.api.factors_view import ClusterLabels, FactorGroup, emissions
from jobenergy.api.job_lookup import JobDetail, NodeMark, SourceTotal, StepTotals, job_nodes
from jobenergy.api.schemas import (
    DeviceEnergy,
    JobOut,
    JobQuality,
    PhaseOut,
    SlurmStepOut,
    StepOut,
)
from jobenergy.collector.steps import OUTSIDE_STEP, step_sort_key
from jobenergy.core import carbon
from jobenergy.core.schema import ATTRIBUTED_COMPONENTS
from jobenergy.core.slurm_jobids import sacct_job_id


class DetailLabels(ClusterLabels):
    """Carbon source labels from the factors read with the jobs (:class:`JobDetail`
    ``configs``); a cluster's are read from the database only when they were not."""

    def __init__(self, session: Any, details: list[JobDetail]) -> None:
        """Remember the configs that came with ``details``."""
        super().__init__(session)
        self._known = {d.job.cluster: d.configs for d in details if d.configs is not None}

    def configs(self, cluster: str) -> tuple[Any, Any]:
        """Return the cluster's config row and the defaults row."""
        known = self._known.get(cluster)
        return known if known is not None else super().configs(cluster)


def job_view(
    job: Any,
    totals: list[SourceTotal],
    groups: list[FactorGroup],
    phases: list[dict[str, Any]],
    labels: ClusterLabels,
    steps: StepTotals | None = None,
    seen: set[str] | None = None,
    marks: dict[tuple[str, str], NodeMark] | None = None,
) -> JobOut:
    """Assemble a job's JSON from its metadata (a ``Job`` or a row of its columns), per-source
    totals, factor groups, phases, per-step energy, the nodes whose agents saw it and those
    nodes' high-water marks.

    ``final``: the job has ended and every node of it (:func:`job_nodes`; at least one) has
    intervals ingested up to or past its end. ``quality.unmeasured``: the job has no
    per-source total at all, and a node of it was seen by its agent or has no sources.
    """
    seen = seen or set()
    marks = marks or {}
    totals = [t for t in totals if t.component in ATTRIBUTED_COMPONENTS]
    by_component = {"cpu": 0, "dram": 0}
    by_node: dict[str, dict[str, int]] = {}
    best_by_node: dict[str, float] = {}
    devices = []
    for t in sorted(totals, key=lambda t: (t.node, t.component, t.source)):
        by_component[t.component] = by_component.get(t.component, 0) + t.energy_uj
        node = by_node.setdefault(t.node, {})
        node[t.component] = node.get(t.component, 0) + t.energy_uj
        best_by_node[t.node] = max(best_by_node.get(t.node, 0.0), t.covered_s)
        if t.component == "gpu":
            devices.append(
                DeviceEnergy(
                    node=t.node, source=t.source, device_name=t.device_name,
                    component=t.component, energy_uj=t.energy_uj,
                )
            )
    energy_uj = sum(by_component.values())
    nodes = job_nodes(job, totals, seen)
    mark = {node: marks.get((job.cluster, node)) for node in nodes}
    final = job.end_at is not None and bool(nodes) and all(
        m is not None and m.last_at >= job.end_at for m in mark.values()
    )
    unmeasured_nodes = sorted(
        node for node in nodes
        if node not in by_node
        and (node in seen or (mark[node] is not None and mark[node].last_sources == 0))
    )
    elapsed_s = None
    if job.start_at is not None and job.end_at is not None:
        elapsed_s = (job.end_at - job.start_at).total_seconds()
    elif job.start_at is not None and (job.state or "").upper() == "RUNNING":
        elapsed_s = max(0.0, (datetime.now(UTC) - job.start_at).total_seconds())  # so far
    # A job is only as well covered as its worst node.
    covered_s = min(best_by_node.values(), default=0.0)
    coverage = covered_s / elapsed_s if elapsed_s else None
    kwh = carbon.energy_kwh(energy_uj)
    em = emissions(job.cluster, groups, labels)
    estimated_components = sorted({t.component for t in totals if t.estimated_uj > 0})
    # Reconciled where the job got a share of a BMC's `other` (agent/reconcile.py gives no
    # job a row for a flagged window), on every node it has energy on.
    bmc_nodes = sorted({t.node for t in totals if t.component == "other" and t.energy_uj})
    return JobOut(
        job_id=job.job_id,
        sacct_job_id=sacct_job_id(job.job_id, job.array_job_id, job.array_task_id,
                                  job.het_job_id, job.het_job_offset),
        cluster=job.cluster,
        user=job.user,
        uid=job.uid,
        account=job.account,
        partition=job.partition,
        name=job.name,
        state=job.state,
        exit_code=job.exit_code,
        nodes=list(job.nodes) if job.nodes else sorted(set(by_node) | seen),
        gpus=job.gpus,
        start=job.start_at,
        end=job.end_at,
        elapsed_s=elapsed_s,
        final=final,
        energy_uj=energy_uj,
        by_component=by_component,
        by_node=by_node,
        devices=devices,
        energy_kwh=kwh,
        pue=em.pue,
        pue_source=em.pue_source,
        facility_uj=em.facility_uj,
        facility_energy_kwh=em.facility_energy_kwh,
        carbon_intensity_g_per_kwh=em.carbon_intensity_g_per_kwh,
        carbon_intensity_fallback=em.carbon_intensity_fallback,
        carbon_intensity_source=em.carbon_intensity_source,
        carbon_intensity_sources=em.carbon_intensity_sources,
        co2e_ug=em.co2e_ug,
        co2e_kg=em.co2e_kg,
        model=job.model,
        phase=job.phase,
        tags=dict(job.tags or {}),
        phases=[PhaseOut(**p) for p in phases],
        array_job_id=job.array_job_id,
        array_task_id=job.array_task_id,
        het_job_id=job.het_job_id,
        het_job_offset=job.het_job_offset,
        alloc_tres=job.alloc_tres,
        kill_requid=job.kill_requid,
        slurm_steps=slurm_steps(job.slurm_steps),
        steps=step_view(steps or {}, by_component),
        quality=JobQuality(
            sources=sorted({t.source for t in totals}),
            samples=max((t.intervals for t in totals), default=0),
            covered_s=covered_s,
            elapsed_s=elapsed_s,
            coverage=coverage,
            wraps=sum(t.wraps for t in totals),
            resets=sum(t.resets for t in totals),
            estimated_uj=sum(t.estimated_uj for t in totals),
            estimated_components=estimated_components,
            unmeasured=not totals and bool(unmeasured_nodes),
            unmeasured_nodes=unmeasured_nodes,
            bmc_reconciled=bool(bmc_nodes) and set(bmc_nodes) >= set(by_node),
            bmc_nodes=bmc_nodes,
        ),
    )


def slurm_steps(stored: Any) -> list[SlurmStepOut]:
    """Return the steps the Slurm sync stored (``job.slurm_steps``), in Slurm's order."""
    if not isinstance(stored, list):
        return []
    return [SlurmStepOut(step=str(item["id"]), name=item.get("name"))
            for item in stored if isinstance(item, dict) and item.get("id")]


def step_view(steps: StepTotals, job_by_component: dict[str, int] | None = None) -> list[StepOut]:
    """Return a job's steps (batch, extern, then numbered ascending) with their energy.

    The job's energy that no step carries (intervals without step CPU time, or no step
    information at all) is the last entry, :data:`OUTSIDE_STEP`, per component
    ``job − Σ steps``, so that the entries always add up to the job exactly; there is none
    when nothing is left.
    """
    steps = {step: dict(parts) for step, parts in steps.items()}
    if job_by_component is not None:
        rest = {
            c: job_by_component.get(c, 0) - sum(parts.get(c, 0) for parts in steps.values())
            for c in sorted({*job_by_component, *(c for p in steps.values() for c in p)})
        }
        if any(rest.values()):
            outside = steps.setdefault(OUTSIDE_STEP, {})
            for component, energy in rest.items():
                if energy:
                    outside[component] = outside.get(component, 0) + energy
    out = []
    for step in sorted(steps, key=step_sort_key):
        by_component = {c: steps[step][c] for c in sorted(steps[step])}
        energy_uj = sum(by_component.values())
        out.append(
            StepOut(
                step=step, energy_uj=energy_uj, energy_kwh=carbon.energy_kwh(energy_uj),
                by_component=by_component,
            )
        )
    return out


def view_of(detail: JobDetail, labels: ClusterLabels) -> JobOut:
    """Return the JSON of a job read with :func:`lookup_details` or :func:`page_details`."""
    return job_view(detail.job, detail.totals, detail.groups, detail.phases, labels,
                    detail.steps, detail.seen, detail.marks)
