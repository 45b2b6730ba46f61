"""How much of an interval each job existed for (DESIGN.md decision 16).

A job pays for the time it existed, not for whole sample intervals: in the interval where its
cgroup appears, it is charged from its birth; in the interval where it ends, up to its end.
Birth is the job cgroup folder's ctime (set at mkdir), else the prolog's ``start`` in the job
map; the end is the epilog's ``end`` in the job map. When neither is known (a site without
the jobenergy hooks, a vanished cgroup without an epilog mark yet) the job is taken to have
lived for the whole interval, as before.

Attribution uses the result to prorate the static (idle) part of the boundary intervals; the
rest is the node's unattributed energy, so conservation stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jobenergy.agent.jobmap import JobMapEntry
from jobenergy.agent.readings import JobCgroup


def alive_ns(
    job_ids: Iterable[str],
    *,
    start_ns: int,
    end_ns: int,
    prev_jobs: Mapping[str, JobCgroup],
    cur_jobs: Mapping[str, JobCgroup],
    job_map: Mapping[str, JobMapEntry],
) -> dict[str, int]:
    """Return, for the jobs that lived only part of ``[start_ns, end_ns)``, how long they did.

    Args:
        job_ids: The jobs to look at.
        start_ns: The interval's start (the previous sample), epoch ns.
        end_ns: Its end (this sample), epoch ns.
        prev_jobs: Job cgroups at the previous sample (a job there was alive at the start).
        cur_jobs: Job cgroups at this sample.
        job_map: The hooks' job map (the later of the two samples' views).

    Returns:
        Job id → ns alive inside the interval, ``0 <= ns < end_ns - start_ns``; jobs alive for
        the whole interval are left out.
    """
    span_ns = end_ns - start_ns
    out: dict[str, int] = {}
    if span_ns <= 0:
        return out
    for job_id in job_ids:
        entry = job_map.get(job_id)
        lo = start_ns
        if job_id not in prev_jobs:
            cg = cur_jobs.get(job_id)
            born = cg.born_ns if cg is not None else None
            if born is None and entry is not None:
                born = entry.start_ns
            if born is not None:
                lo = min(max(born, start_ns), end_ns)
        hi = end_ns
        if entry is not None and entry.end_ns is not None:
            hi = min(max(entry.end_ns, lo), end_ns)
        if hi - lo < span_ns:
            out[job_id] = hi - lo
    return out


def prorate(
    jobs_uj: Mapping[str, int], unattributed_uj: int, alive: Mapping[str, int], span_ns: int
) -> tuple[dict[str, int], int]:
    """Cut each job's share to the part of the interval it lived; the rest is unattributed.

    Used for GPUs, whose holder pays for the device busy or idle: only while it holds it.
    Integer arithmetic: ``Σ jobs + unattributed`` is unchanged.
    """
    if not alive or span_ns <= 0:
        return dict(jobs_uj), unattributed_uj
    out: dict[str, int] = {}
    for job_id, energy_uj in jobs_uj.items():
        lived = alive.get(job_id)
        keep = energy_uj if lived is None else energy_uj * max(0, lived) // span_ns
        unattributed_uj += energy_uj - keep
        if keep or lived is None:
            out[job_id] = keep
    return out, unattributed_uj
