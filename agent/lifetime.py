"""How much of an interval each job existed for (DESIGN.md decision 16).

A job pays for the time it existed, not for whole sample intervals: in the interval where its
cgroup appears, it is charged from its birth; in the interval where it ends, up to its end.
Birth is the job cgroup's ctime (set at mkdir: :meth:`SlurmCgroups._born_ns`), else the
prolog's ``start`` in the job map; the end is when its folder was removed (its parent's ctime,
read at the sample that found it gone) or the epilog's ``end`` in the job map, whichever is
earlier (both are upper bounds; the epilog runs after the removal, late on a loaded node).
When nothing is known the job is taken to have lived for the whole interval, as before.

Attribution uses the result to prorate the static (idle) part of the boundary intervals; the
rest is the node's unattributed energy, so conservation stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jobenergy.agent.jobmap import JobMapEntry
from jobenergy.agent.readings import JobCgroup


def alive_spans(
    job_ids: Iterable[str],
    *,
    start_ns: int,
    end_ns: int,
    prev_jobs: Mapping[str, JobCgroup],
    cur_jobs: Mapping[str, JobCgroup],
    job_map: Mapping[str, JobMapEntry],
    ended: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Return, for the jobs that lived only part of ``[start_ns, end_ns)``, when they did.

    Args:
        job_ids: The jobs to look at.
        start_ns: The interval's start (the previous sample), epoch ns.
        end_ns: Its end (this sample), epoch ns.
        prev_jobs: Job cgroups at the previous sample (a job there was alive at the start).
        cur_jobs: Job cgroups at this sample.
        job_map: The hooks' job map (the later of the two samples' views).
        ended: Jobs whose cgroup vanished in the interval → when (epoch ns, upper bound).

    Returns:
        Job id → (from, to) ns after the interval's start, ``0 <= from <= to <= span``, with
        ``to - from < span``; jobs alive for the whole interval are left out.
    """
    span_ns = end_ns - start_ns
    out: dict[str, tuple[int, int]] = {}
    if span_ns <= 0:
        return out
    for job_id in job_ids:
        entry = job_map.get(job_id)
        lo = start_ns
        if job_id not in prev_jobs:
            cg = cur_jobs.get(job_id)
            born = cg.born_ns if cg is not None else None
            if cg is None and entry is not None and entry.end_ns is None:
                # Announced by the prolog, no cgroup yet (on a loaded node the prolog can run
                # a second before the cgroup is made): it does not exist for energy yet. A job
                # whose cgroup no sample saw gets its lifetime from the map once it ended.
                out[job_id] = (0, 0)
                continue
            if born is None and entry is not None:
                born = entry.start_ns
            if born is not None:
                lo = min(max(born, start_ns), end_ns)
        hi = end_ns
        if entry is not None and entry.end_ns is not None:
            hi = min(hi, entry.end_ns)
        if ended and job_id in ended:
            hi = min(hi, ended[job_id])
        hi = max(hi, lo)
        if hi - lo < span_ns:
            out[job_id] = (lo - start_ns, hi - start_ns)
    return out
