"""A batch flattened into rows and per-key sums in Python, before any database work.

Each total is then upserted once per batch (``collector/ingest.py``). The hourly parts (a job's,
a node's) split every stored share over the UTC hours alone, by
:func:`jobenergy.core.carbon.split_over_hours`: a series of whole hours read from them is the
one the raw intervals give (``api/series_queries.py`` splits each row alone too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobenergy.collector.models import BIGINT_MAX
from jobenergy.collector.sql import IngestRejected
from jobenergy.core.carbon import HOUR, hour_floor, split_over_hours
from jobenergy.core.schema import Batch, PhaseRecord


@dataclass
class JobSummary:
    """What one batch adds to a job's summary row."""

    uid: int | None = None
    energy_uj: int = 0
    gpu_uj: int = 0
    gpu_s: float = 0.0
    begin_at: datetime | None = None
    model: str | None = None
    phase: str | None = None
    samples: int | None = None
    annotated: bool = False  # a phase label or record of the job in this batch


@dataclass
class Plan:
    """A batch flattened into rows and per-key sums."""

    # (job_id | None, component, source, interval index, energy_uj, estimated)
    rows: list[tuple[str | None, str, str, int, int, bool]] = field(default_factory=list)
    # (job_id, component, source) -> [energy, estimated, intervals, covered_s, first, last,
    #                                  wraps, resets, device_name]
    job_totals: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)
    # (component, source) -> [measured, unattributed, intervals, first, last]
    node_totals: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    jobs: dict[str, JobSummary] = field(default_factory=dict)
    # (job_id, UTC hour) -> µJ
    job_hours: dict[tuple[str, datetime], int] = field(default_factory=dict)
    # (component, UTC hour) -> [measured, unattributed]: each share split over the hours alone
    node_hours: dict[tuple[str, datetime], list[int]] = field(default_factory=dict)
    # (job_id, phase, model or "") -> [energy_uj, intervals, first, last, gpu_s]
    phase_energy: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)
    phase_records: list[PhaseRecord] = field(default_factory=list)
    # job_id -> [first, last, intervals]: the jobs this node's agent saw (samples or shares)
    job_nodes: dict[str, list[Any]] = field(default_factory=dict)
    # The node's progress: [first start, last end, intervals, sources of the last interval]
    progress: list[Any] | None = None


def fold_summary(into: JobSummary, later: JobSummary) -> None:
    """Fold a later batch's summary of a job into ``into``: storing the result once is what
    storing the two in turn gives (``collector/ingest.py``'s job upsert: sums add, the first
    uid, model and phase given stay, the earliest begin)."""
    into.uid = into.uid if into.uid is not None else later.uid
    into.energy_uj += later.energy_uj
    into.gpu_uj += later.gpu_uj
    into.gpu_s += later.gpu_s
    if into.begin_at is None or (later.begin_at is not None and later.begin_at < into.begin_at):
        into.begin_at = later.begin_at
    into.model = into.model if into.model is not None else later.model
    into.phase = into.phase if into.phase is not None else later.phase
    if later.samples is not None:
        into.samples = (into.samples or 0) + later.samples
    into.annotated = into.annotated or later.annotated


def _job(plan: Plan, job_id: str) -> JobSummary:
    summary = plan.jobs.get(job_id)
    if summary is None:
        summary = plan.jobs[job_id] = JobSummary()
    return summary


def plan_batch(batch: Batch) -> Plan:
    """Flatten ``batch``: interval rows, per-key totals, per-job hours, phases.

    Raises:
        IngestRejected: A total of this batch alone is above the 64-bit range.
    """
    plan = Plan()
    rows, job_totals, node_totals, hours, node_hours = (
        plan.rows, plan.job_totals, plan.node_totals, plan.job_hours, plan.node_hours
    )
    for index, interval in enumerate(batch.intervals):
        start, end = interval.start, interval.end
        duration_s = (end - start).total_seconds()
        first_hour = hour_floor(start)
        crosses_hour = end > first_hour + HOUR
        if plan.progress is None:
            plan.progress = [start, end, 0, 0]
        plan.progress[2] += 1
        if end >= plan.progress[1]:
            plan.progress[1], plan.progress[3] = end, len(interval.sources)
        seen = {sample.job_id for sample in interval.jobs}
        for src in interval.sources:
            seen.update(src.jobs_uj)
        for job_id in seen:
            presence = plan.job_nodes.get(job_id)
            if presence is None:
                plan.job_nodes[job_id] = [start, end, 1]
            else:
                presence[0], presence[1] = min(presence[0], start), max(presence[1], end)
                presence[2] += 1
        phase_of: dict[str, tuple[str, str]] = {}
        # A job that started or ended inside the interval covers only the part it lived.
        lived_s = {
            sample.job_id: min(duration_s, sample.alive_us / 1e6)
            for sample in interval.jobs
            if sample.alive_us is not None
        }
        for sample in interval.jobs:
            summary = _job(plan, sample.job_id)
            if sample.uid is not None:
                summary.uid = sample.uid
            if sample.phase is not None:
                phase_of[sample.job_id] = (sample.phase, sample.model or "")
                summary.phase = summary.phase or sample.phase
                summary.model = summary.model or sample.model
        interval_phase_uj: dict[tuple[str, str, str], int] = {}
        interval_phase_gpu_s: dict[tuple[str, str, str], float] = {}
        for src in interval.sources:
            component, source, estimated = src.component, src.source, src.estimated
            node_key = (component, source)
            node_total = node_totals.get(node_key)
            if node_total is None:
                node_totals[node_key] = [src.measured_uj, src.unattributed_uj, 1, start, end]
            else:
                node_total[0] += src.measured_uj
                node_total[1] += src.unattributed_uj
                node_total[2] += 1
                if end > node_total[4]:
                    node_total[4] = end
            for job_id, energy_uj in src.jobs_uj.items():
                job_s = lived_s.get(job_id, duration_s)
                rows.append((job_id, component, source, index, energy_uj, estimated))
                key = (job_id, component, source)
                total = job_totals.get(key)
                if total is None:
                    job_totals[key] = [
                        energy_uj, energy_uj if estimated else 0, 1, job_s, start, end,
                        src.wraps, src.resets, src.device_name,
                    ]
                else:
                    total[0] += energy_uj
                    if estimated:
                        total[1] += energy_uj
                    total[2] += 1
                    total[3] += job_s
                    if end > total[5]:
                        total[5] = end
                    total[6] += src.wraps
                    total[7] += src.resets
                    if src.device_name is not None:
                        total[8] = src.device_name
                summary = _job(plan, job_id)
                summary.energy_uj += energy_uj
                if component == "gpu":
                    summary.gpu_uj += energy_uj
                    summary.gpu_s += job_s
                if summary.begin_at is None or start < summary.begin_at:
                    summary.begin_at = start
                for hour, part in split_over_hours(start, end, energy_uj).items():
                    hours[(job_id, hour)] = hours.get((job_id, hour), 0) + part
                    if crosses_hour:
                        acc = node_hours.get((component, hour))
                        if acc is None:
                            node_hours[(component, hour)] = [part, 0]
                        else:
                            acc[0] += part
                phase = phase_of.get(job_id)
                if phase is not None:
                    pkey = (job_id, *phase)
                    interval_phase_uj[pkey] = interval_phase_uj.get(pkey, 0) + energy_uj
                    if component == "gpu":
                        interval_phase_gpu_s[pkey] = (
                            interval_phase_gpu_s.get(pkey, 0.0) + job_s
                        )
            # The node's own account; a source with no job shares is stored even at 0 µJ so
            # that its measurement is on record.
            if src.unattributed_uj or not src.jobs_uj:
                rows.append((None, component, source, index, src.unattributed_uj, estimated))
            # Inside one hour, the shares' parts add up to the measured µJ (the schema checks
            # conservation); across an edge each stored share is split alone (above and here),
            # as the series splits each stored row (api/series_queries.py).
            if not crosses_hour:
                acc = node_hours.get((component, first_hour))
                if acc is None:
                    node_hours[(component, first_hour)] = [src.measured_uj, src.unattributed_uj]
                else:
                    acc[0] += src.measured_uj
                    acc[1] += src.unattributed_uj
            elif src.unattributed_uj or not src.jobs_uj:
                for hour, part in split_over_hours(start, end, src.unattributed_uj).items():
                    acc = node_hours.get((component, hour))
                    if acc is None:
                        node_hours[(component, hour)] = [part, part]
                    else:
                        acc[0] += part
                        acc[1] += part
        for pkey, energy_uj in interval_phase_uj.items():
            gpu_s = interval_phase_gpu_s.get(pkey, 0.0)
            acc = plan.phase_energy.get(pkey)
            if acc is None:
                plan.phase_energy[pkey] = [energy_uj, 1, start, end, gpu_s]
            else:
                acc[0] += energy_uj
                acc[1] += 1
                acc[2], acc[3] = min(acc[2], start), max(acc[3], end)
                acc[4] += gpu_s
        for record in interval.phases:
            plan.phase_records.append(record)
            summary = _job(plan, record.job_id)
            summary.phase = summary.phase or record.phase
            summary.model = summary.model or record.model
            if record.samples is not None:
                summary.samples = (summary.samples or 0) + record.samples
    # Annotated: the job gets job_phase rows from this batch (collector/phases.py).
    for job_id in {key[0] for key in plan.phase_energy} | {
        record.job_id for record in plan.phase_records
    }:
        _job(plan, job_id).annotated = True
    for totals in (job_totals.values(), node_totals.values()):
        for total in totals:
            if total[0] > BIGINT_MAX or total[1] > BIGINT_MAX:
                raise IngestRejected(f"energy total above {BIGINT_MAX} µJ in one batch")
    return plan
