"""The model leaderboard's parts of annotated jobs: the ``job_board_part`` table.

A job with in-job phase annotations (``job_phase`` rows, ``job.annotated``) is counted by the
model leaderboard per (model, phase) of its annotations, not whole under its job-level tags:

- each annotated phase brings its energy, samples and GPU-seconds; its model is the
  annotation's, else the job's;
- the rest of the job (energy outside any annotated phase: set-up, data loading, an
  un-annotated evaluation) goes to the job-level (model, phase): a job-level tag applies where
  the job has no annotations;
- parts that land on the same (model, phase) add up, so a job counts once per row, and its
  energy in that row is what the row's median ranks;
- ``sampled_uj`` is the annotated energy of a part whose phases reported samples, so J per
  sample (``sampled_uj / samples``) never mixes in the un-annotated rest;
- a part with no model (neither the annotation nor the job names one) is on no row.

Facility energy and CO2e are not stored here: the leaderboard prorates the job's by energy.
Rows are rewritten for a job, in the caller's transaction and under the job's row lock,
whenever its energy or phases change (ingest) or its model/phase tags change (job events).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Select,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    select,
)

from jobenergy.collector.models import Job, JobBoardPart, JobPhase

_B, _P = JobBoardPart, JobPhase
_CHUNK = 1000

#: (phase, model or "", energy_uj, samples or None, gpu_s) of one ``job_phase`` row.
PhaseRow = tuple[str, str, int, int | None, float]


def board_parts(
    job_model: str | None,
    job_phase: str | None,
    job_energy_uj: int,
    job_gpu_s: float,
    phases: Iterable[PhaseRow],
) -> dict[tuple[str, str], list[Any]]:
    """Return a job's parts: (model, phase or "") -> [energy_uj, sampled_uj, samples, gpu_s].

    See the module docstring for the rules; the parts' energy adds up to the job's (less the
    phases that name no model when the job names none either).
    """
    parts: dict[tuple[str, str], list[Any]] = {}
    annotated_uj, annotated_gpu_s = 0, 0.0
    for phase, model, energy_uj, samples, gpu_s in phases:
        annotated_uj += energy_uj
        annotated_gpu_s += gpu_s
        name = model or job_model
        if not name:
            continue
        part = parts.setdefault((name, phase), [0, 0, None, 0.0])
        part[0] += energy_uj
        part[3] += gpu_s
        if samples:
            part[2] = (part[2] or 0) + samples
    for part in parts.values():
        # The phase's annotated energy over its samples; the rest (below) has none.
        part[1] = part[0] if part[2] else 0
    rest_uj = max(0, job_energy_uj - annotated_uj)
    rest_gpu_s = max(0.0, job_gpu_s - annotated_gpu_s)
    kept = {key: part for key, part in parts.items() if part[0] > 0 or part[2]}
    if job_model and (rest_uj > 0 or not kept):
        part = kept.setdefault((job_model, job_phase or ""), parts.get(
            (job_model, job_phase or ""), [0, 0, None, 0.0]))
        part[0] += rest_uj
        part[3] += rest_gpu_s
    return kept


def refresh_board(conn: Connection, cluster: str, job_ids: Sequence[str]) -> None:
    """Rewrite the ``job_board_part`` rows of those of ``job_ids`` that have annotations.

    The caller holds the jobs' row locks (ingest's job upsert, the event's SELECT FOR UPDATE).
    """
    ids = sorted(set(job_ids))
    phases: dict[str, list[PhaseRow]] = defaultdict(list)
    for i in range(0, len(ids), _CHUNK):
        for job_id, phase, model, energy, samples, gpu_s in conn.execute(
            select(_P.job_id, _P.phase, _P.model, _P.energy_uj, _P.samples, _P.gpu_s)
            .where(_P.cluster == cluster, _P.job_id.in_(ids[i : i + _CHUNK]))
            .order_by(_P.job_id, _P.phase, _P.model)
        ):
            phases[job_id].append((phase, model, int(energy), samples, float(gpu_s or 0.0)))
    if not phases:
        return
    annotated = sorted(phases)
    rows = []
    for i in range(0, len(annotated), _CHUNK):
        chunk = annotated[i : i + _CHUNK]
        conn.execute(delete(_B).where(_B.cluster == cluster, _B.job_id.in_(chunk)))
        for job_id, model, phase, energy, gpu_s in conn.execute(
            select(Job.job_id, Job.model, Job.phase, Job.energy_uj, Job.gpu_s)
            .where(Job.cluster == cluster, Job.job_id.in_(chunk))
        ):
            parts = board_parts(model, phase, int(energy or 0), float(gpu_s or 0.0),
                                phases[job_id])
            rows += [
                {"cluster": cluster, "job_id": job_id, "model": part_model,
                 "phase": part_phase, "energy_uj": e, "sampled_uj": sampled, "samples": n,
                 "gpu_s": g}
                for (part_model, part_phase), (e, sampled, n, g) in sorted(parts.items())
            ]
    if rows:
        conn.execute(insert(_B), rows)


def job_part_rows(where: Sequence[Any]) -> Select[Any]:
    """The leaderboard parts of jobs without annotations: one per job, under its job-level
    model and phase (``where``: conditions on ``job``)."""
    with_samples = Job.samples > 0
    return select(
        Job.model.label("model"), Job.phase.label("phase"), Job.energy_uj.label("energy_uj"),
        cast(Job.facility_uj, Float).label("facility_uj"),
        cast(Job.co2e_ug, Float).label("co2e_ug"), Job.gpu_s.label("gpu_s"),
        case((with_samples, Job.samples)).label("samples"),
        case((with_samples, Job.energy_uj)).label("sampled_uj"),
    ).where(Job.model.is_not(None), Job.annotated == false(), *where)


def annotated_part_rows(job_where: Sequence[Any], part_where: Sequence[Any]) -> Select[Any]:
    """The ``job_board_part`` rows of annotated jobs, with the job's facility energy and CO2e
    prorated by energy (``job_where`` on ``job``, ``part_where`` on ``job_board_part``)."""
    share = cast(_B.energy_uj, Float) / func.nullif(Job.energy_uj, 0)
    with_samples = _B.samples > 0
    return (
        select(
            _B.model.label("model"), func.nullif(_B.phase, "").label("phase"),
            _B.energy_uj.label("energy_uj"),
            func.coalesce(Job.facility_uj * share, 0.0).label("facility_uj"),
            func.coalesce(Job.co2e_ug * share, 0.0).label("co2e_ug"), _B.gpu_s.label("gpu_s"),
            case((with_samples, _B.samples)).label("samples"),
            case((with_samples, _B.sampled_uj)).label("sampled_uj"),
        )
        .join(Job, and_(Job.cluster == _B.cluster, Job.job_id == _B.job_id))
        .where(*job_where, *part_where)
    )
