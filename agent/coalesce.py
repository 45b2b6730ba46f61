"""Sampled intervals merged, exactly, into the intervals the agent stores (``store_interval_s``).

The agent samples every ``interval_s`` (1 s: attribution needs it) but the collector stores
one row per source and job per interval, so consecutive sampled intervals are merged into
one stored interval of up to ``store_interval_s`` before they are spooled. Every total the
collector derives from the stored intervals (``collector/plan.py``, ``steps.py``,
``phases.py``) is the same as from the sampled ones; what changes is only the resolution of
the times and the interval counts (first/last seen, ``intervals``).

Rules per wire field (``core/schema.py``) for the intervals k of one stored interval:

``Interval``
    ``start`` the first's, ``end`` the last's (intervals are contiguous: ``k.start`` is the
    previous ``k.end``); ``phases`` concatenated in order (closed phase records are not split
    by time; at most ``MAX_PHASES_PER_INTERVAL`` per stored interval, as per sampled one, so
    an interval's size stays bounded for ``max_batch_bytes``).
``SourceEnergy`` (same sources, in the same order, in every k: see "never merged")
    ``component``, ``source``, ``device_name``, ``estimated`` are equal in every k (part of the
    source's identity); ``measured_uj``, each ``jobs_uj[j]`` and ``unattributed_uj`` are
    integer sums, so ``Σ jobs + unattributed == measured`` holds by construction; ``jobs_uj``
    keeps every job that had a key in some k; ``wraps`` is the sum (≤ 1000), merged only
    where every job with a share in the stored interval had one in each k with a wrap (the
    collector counts a source's wraps per job share); ``resets`` is 0 (an interval with a
    reset is never merged).
``JobSample`` (of the k where the job has one)
    ``job_id``; ``uid`` and ``cpus`` (constant for a job: the known value, unknown = None;
    two different known values are never merged); ``cpu_time_us`` the sum; ``ended`` true
    when the job ended in the last k it appears in (a job that shows up again after it
    ended is never merged); ``step_ids`` the union in order; ``step_cpu_us`` per-step sums;
    ``phase``/``model`` equal in every k (the collector splits energy by phase on interval
    boundaries); ``alive_us`` None when the job has a sample with ``alive_us`` None in
    every k (it lived through all of them), else the sum over its k of ``alive_us`` (or
    k's duration where None): the collector's ``covered_s``/``gpu_s`` (``min(duration,
    alive_us)`` per share) then add up exactly, given the share rule below; ``step_uj``
    (only when the job's per-step split would otherwise change: several busy steps, or
    energy in some k without step time) the sum over its k of the split the collector would
    make of each k (``core/steps.py``), so every step keeps its µJ whatever is merged; sent
    only to a collector whose answers name it (``agent/answer.py``), else such a job cuts
    the stored interval (an older collector splits the merged interval itself).

Never merged (the stored interval is cut before the sampled one that would break a rule):

* a gap interval (energy while no agent ran) or an interval with a counter reset: alone;
* intervals that do not follow each other (``start`` != the previous ``end``);
* a change of the set of sources (a counter appears, vanishes, switches to power
  integration, a GPU is renamed): its energy belongs to a different series;
* across a UTC hour boundary (the collector spreads an interval's energy over the hours it
  overlaps by time: carbon per hour would move): an interval straddling one is alone;
* a job whose phase label (``phase``, ``model``) differs from its label in the stored
  interval so far (per-phase energy is attributed by label per interval);
* a job whose set of sources with a share differs (its ``covered_s`` per source would
  change), or a share without a job sample;
* more than ``store_interval_s`` + half a sample: a stored interval spans at most that, and
  is closed as soon as another sample would not fit (never held longer).

With ``store_interval_s`` equal to ``interval_s`` nothing is merged: each sampled interval is
stored as it is, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jobenergy.agent.phases import MAX_PHASES_PER_INTERVAL
from jobenergy.agent.records import JobRecord, SampledInterval
from jobenergy.core.limits import MAX_JOBS_PER_SOURCE, MAX_STEPS_PER_JOB
from jobenergy.core.steps import job_energy_by_component, split_over_steps

HOUR_US = 3_600_000_000
_MAX_WRAPS = 1_000  # SourceEnergy.wraps


def _signature(rec: SampledInterval) -> tuple:
    return tuple((s.source, s.component, s.device_name, s.estimated) for s in rec.sources)


def _stands_alone(rec: SampledInterval) -> bool:
    """True for a gap interval, a counter reset, or a share of a job without a sample."""
    if rec.gap:
        return True
    job_ids = None
    for src in rec.sources:
        if src.resets:
            return True
        if src.jobs_uj:
            if job_ids is None:
                job_ids = {j.job_id for j in rec.jobs}
            if not job_ids.issuperset(src.jobs_uj):
                return True
    return False


def _positive_steps(job: JobRecord) -> frozenset[str]:
    steps = job.step_cpu_us
    if not steps:
        return frozenset()
    if min(steps.values()) > 0:  # as the agent makes them
        return frozenset(steps)
    return frozenset(s for s, us in steps.items() if us > 0)


def _job_energy(rec: SampledInterval, job_id: str) -> int:
    return sum(src.jobs_uj.get(job_id, 0) for src in rec.sources)


def _add_split(acc: dict[str, dict[str, int]], rec: SampledInterval, job_id: str) -> None:
    """Add to ``acc`` the job's energy of ``rec`` split over its steps, as the collector
    splits a stored interval (``core/steps.py``); nothing when the job is not in ``rec``."""
    job = next((j for j in rec.jobs if j.job_id == job_id), None)
    if job is None:
        return
    split = split_over_steps(
        job_energy_by_component(((s.component, s.jobs_uj) for s in rec.sources), job_id),
        job.step_cpu_us)
    for component, parts in split.items():
        mine = acc.setdefault(component, {})
        for step, energy_uj in parts.items():
            mine[step] = mine.get(step, 0) + energy_uj


class _Job:
    """One job's merged sample in an open stored interval."""

    __slots__ = (
        "active", "cpu_time_us", "cpus", "ended", "job_id", "lived_us", "model", "phase",
        "present", "step_cpu_us", "step_ids", "step_uj", "steps", "uid", "unstepped", "whole",
    )

    def __init__(self, job: JobRecord, span_us: int, energy_pos: bool) -> None:
        self.job_id = job.job_id
        self.uid = job.uid
        self.cpus = job.cpus
        self.cpu_time_us = job.cpu_time_us
        self.ended = job.ended
        self.step_ids = list(job.step_ids)
        self.step_cpu_us = dict(job.step_cpu_us)
        self.phase = job.phase
        self.model = job.model
        self.whole = job.alive_us is None
        self.lived_us = span_us if job.alive_us is None else job.alive_us
        self.present = 1
        self.steps = _positive_steps(job)
        # Intervals with anything of the job (energy or step time), and whether one of them
        # had energy but no step time (that energy is in no step at the collector).
        self.active = int(bool(self.steps) or energy_pos)
        self.unstepped = energy_pos and not self.steps
        # The split over steps, carried once the collector's own split of the merged
        # interval would differ from the sum of its splits of the samples (module doc).
        self.step_uj: dict[str, dict[str, int]] | None = None

    def add(self, job: JobRecord, span_us: int, energy_pos: bool, steps: frozenset[str]) -> None:
        if self.uid is None:
            self.uid = job.uid
        if self.cpus is None:
            self.cpus = job.cpus
        self.cpu_time_us += job.cpu_time_us
        self.ended = job.ended
        for step_id in job.step_ids:
            if step_id not in self.step_ids:
                self.step_ids.append(step_id)
        mine = self.step_cpu_us
        for step, us in job.step_cpu_us.items():
            mine[step] = mine.get(step, 0) + us
        self.whole = self.whole and job.alive_us is None
        self.lived_us += span_us if job.alive_us is None else job.alive_us
        self.present += 1
        if not steps <= self.steps:
            self.steps = self.steps | steps
        self.active += int(bool(steps) or energy_pos)
        self.unstepped = self.unstepped or (energy_pos and not steps)

    def wire(self, intervals: int) -> dict[str, Any]:
        out = {
            "job_id": self.job_id,
            "uid": self.uid,
            "cpus": self.cpus,
            "cpu_time_us": self.cpu_time_us,
            "ended": self.ended,
            "step_ids": self.step_ids,
            "step_cpu_us": self.step_cpu_us,
            "phase": self.phase,
            "model": self.model,
            "alive_us": None if self.whole and self.present == intervals else self.lived_us,
        }
        if self.step_uj is not None:
            out["step_uj"] = self.step_uj
        return out


class StoredInterval:
    """Consecutive sampled intervals merged into one stored interval (rules: module doc)."""

    __slots__ = (
        "_hour_end_us", "_jobs", "_sig", "_sources", "closed", "records", "sealed",
    )

    def __init__(self, rec: SampledInterval) -> None:
        self.records: list[SampledInterval] = [rec]
        self.sealed = _stands_alone(rec)  # nothing may join it
        self.closed = self.sealed
        self._sig = _signature(rec)
        self._hour_end_us = (rec.start_us // HOUR_US + 1) * HOUR_US
        # Per source (the order of _sig): [measured, jobs_uj, unattributed, wraps].
        self._sources: list[list] | None = None  # made when a second interval joins
        self._jobs: dict[str, _Job] | None = None

    @property
    def start_us(self) -> int:
        """The stored interval's start, µs since the epoch."""
        return self.records[0].start_us

    @property
    def end_us(self) -> int:
        """Its end, µs since the epoch."""
        return self.records[-1].end_us

    @property
    def last(self) -> SampledInterval:
        """The last sampled interval in it."""
        return self.records[-1]

    def _accumulate_first(self) -> None:
        first = self.records[0]
        span_us = first.end_us - first.start_us
        self._sources = [
            [s.measured_uj, dict(s.jobs_uj), s.unattributed_uj, s.wraps] for s in first.sources
        ]
        self._jobs = {}
        for job in first.jobs:
            energy_pos = False if _positive_steps(job) else _job_energy(first, job.job_id) > 0
            self._jobs[job.job_id] = _Job(job, span_us, energy_pos)

    # -- merging ------------------------------------------------------------------------
    def try_add(self, rec: SampledInterval, max_end_us: int, split_steps: bool = True) -> bool:
        """Merge ``rec`` when every rule allows it (module doc); return whether it was.

        ``split_steps``: the merged interval may carry a job's split over steps
        (``step_uj``); False: a job whose split would change cuts it instead.
        """
        if self.closed or rec.start_us != self.end_us or rec.end_us > max_end_us:
            return False
        if rec.end_us > self._hour_end_us or _signature(rec) != self._sig:
            return False
        if _stands_alone(rec):
            return False
        phases = sum(len(r.phases) for r in self.records)
        if phases + len(rec.phases) > MAX_PHASES_PER_INTERVAL:
            return False
        if self._sources is None:
            self._accumulate_first()
        assert self._sources is not None and self._jobs is not None
        sources, jobs = self._sources, self._jobs
        for acc, src in zip(sources, rec.sources, strict=True):
            # The collector adds a source's wraps to each job with a share in the interval:
            # a wrap may join only where every job with a share had one in its interval.
            if src.wraps and (
                acc[3] + src.wraps > _MAX_WRAPS or not src.jobs_uj.keys() >= acc[1].keys()
            ):
                return False
            if acc[3] and not src.jobs_uj.keys() <= acc[1].keys():
                return False
        new_jobs = [j for j in rec.jobs if j.job_id not in jobs]
        if new_jobs and len(jobs) + len(new_jobs) > MAX_JOBS_PER_SOURCE:
            return False
        # Per source, a job present in both must have a share in both or in neither. Most
        # sources have the same jobs as before: compared as key sets, in C.
        differing = [
            (acc[1], src.jobs_uj)
            for acc, src in zip(sources, rec.sources, strict=True)
            if acc[1].keys() != src.jobs_uj.keys()
        ]
        # Per job: the record, whether it has energy but no step time, its busy steps, and
        # whether the merged interval must carry the job's split over steps.
        facts: list[tuple[JobRecord, bool, frozenset[str], bool]] = []
        for job in rec.jobs:
            steps = _positive_steps(job)
            energy_pos = False if steps else _job_energy(rec, job.job_id) > 0
            mine = jobs.get(job.job_id)
            if mine is None:
                facts.append((job, energy_pos, steps, False))
                continue
            if mine.ended or job.phase != mine.phase or job.model != mine.model:
                return False
            if job.uid is not None and mine.uid is not None and job.uid != mine.uid:
                return False
            if job.cpus is not None and mine.cpus is not None and job.cpus != mine.cpus:
                return False
            for merged, now in differing:
                if (job.job_id in merged) != (job.job_id in now):
                    return False
            # Would the collector's split of the merged interval over the steps differ from
            # the sum of its splits of the samples? Then the split goes with it (module doc).
            merged_steps = mine.steps if steps <= mine.steps else mine.steps | steps
            explicit = mine.step_uj is not None or bool(
                mine.active + int(bool(steps) or energy_pos) > 1
                and merged_steps
                and (len(merged_steps) > 1 or mine.unstepped or (energy_pos and not steps))
            )
            if explicit and not split_steps:
                return False
            facts.append((job, energy_pos, steps, explicit))
            if job.step_ids and len(set(mine.step_ids) | set(job.step_ids)) > MAX_STEPS_PER_JOB:
                return False
            if (
                len(mine.step_cpu_us) + len(job.step_cpu_us) > MAX_STEPS_PER_JOB
                and len(mine.step_cpu_us.keys() | job.step_cpu_us.keys()) > MAX_STEPS_PER_JOB
            ):
                return False
        # Every rule holds: merge.
        span_us = rec.end_us - rec.start_us
        for acc, src in zip(sources, rec.sources, strict=True):
            acc[0] += src.measured_uj
            acc[2] += src.unattributed_uj
            acc[3] += src.wraps
            shares = acc[1]
            for job_id, energy_uj in src.jobs_uj.items():
                shares[job_id] = shares.get(job_id, 0) + energy_uj
        for job, energy_pos, steps, explicit in facts:
            mine = jobs.get(job.job_id)
            if mine is None:
                jobs[job.job_id] = _Job(job, span_us, energy_pos)
                continue
            if explicit:
                if mine.step_uj is None:  # the samples merged so far, then this one
                    mine.step_uj = {}
                    for before in self.records:
                        _add_split(mine.step_uj, before, job.job_id)
                _add_split(mine.step_uj, rec, job.job_id)
            mine.add(job, span_us, energy_pos, steps)
        self.records.append(rec)
        return True

    # -- the wire -------------------------------------------------------------------------
    def wire(self) -> dict[str, Any]:
        """Return the stored interval as the wire ``Interval``'s fields (checked and written
        by :func:`.wire.interval_json`)."""
        first, last = self.records[0], self.records[-1]
        if len(self.records) == 1:
            return {
                "start": first.start,
                "end": first.end,
                "sources": [s.wire() for s in first.sources],
                "jobs": [j.wire() for j in first.jobs],
                "phases": [p.wire() for p in first.phases],
            }
        assert self._sources is not None and self._jobs is not None
        sources = []
        for src, (measured, shares, unattributed, wraps) in zip(
            first.sources, self._sources, strict=True
        ):
            sources.append({
                "component": src.component,
                "source": src.source,
                "device_name": src.device_name,
                "measured_uj": measured,
                "jobs_uj": shares,
                "unattributed_uj": unattributed,
                "estimated": src.estimated,
                "wraps": wraps,
                "resets": 0,
            })
        n = len(self.records)
        return {
            "start": first.start,
            "end": last.end,
            "sources": sources,
            "jobs": [job.wire(n) for job in self._jobs.values()],
            "phases": [p.wire() for r in self.records for p in r.phases],
        }


class Coalescer:
    """Sampled intervals in, stored intervals out, in order (rules: module doc).

    Args:
        store_us: Longest stored interval, µs (``store_interval_s``); at most ``sample_us``:
            nothing is merged.
        sample_us: The sampling interval, µs (``interval_s``); a stored interval is closed
            once it is within half a sample of ``store_us`` and may exceed it by as much.
    """

    def __init__(self, store_us: int, sample_us: int, split_steps: bool = False) -> None:
        self.store_us = store_us
        self.sample_us = sample_us
        # Whether the collector stores ``step_uj`` (its answers say: agent/answer.py); until
        # it does, a job whose per-step split would change cuts the stored interval.
        self.split_steps = split_steps
        self._open: StoredInterval | None = None
        self._closed: list[StoredInterval] = []

    @property
    def merging(self) -> bool:
        """Whether sampled intervals are merged at all (``store_interval_s > interval_s``)."""
        return self.store_us > self.sample_us

    def add(self, rec: SampledInterval) -> None:
        """Merge ``rec`` into the open stored interval, or close that and open a new one."""
        slack_us = self.sample_us // 2
        group = self._open
        if group is None or not self.merging or not group.try_add(
            rec, group.start_us + self.store_us + slack_us, self.split_steps
        ):
            if group is not None:
                group.closed = True
                self._closed.append(group)
            group = self._open = StoredInterval(rec)
        if not self.merging or group.closed or (
            group.end_us - group.start_us > self.store_us - slack_us
        ):
            group.closed = True
            self._closed.append(group)
            self._open = None

    def expire(self, now_us: int) -> None:
        """Close the open stored interval once no sampled interval ending at ``now_us`` (µs
        since the epoch) could join it: samples that fail never hold it open longer."""
        group = self._open
        if group is not None and now_us - group.start_us > self.store_us + self.sample_us // 2:
            self.close()

    def close(self) -> None:
        """Close the open stored interval (shutdown, a final seal)."""
        if self._open is not None:
            self._open.closed = True
            self._closed.append(self._open)
            self._open = None

    @property
    def ready(self) -> int:
        """Closed stored intervals waiting to be spooled."""
        return len(self._closed)

    def complete(self) -> list[StoredInterval]:
        """Return the closed stored intervals, oldest first (kept until :meth:`drop`)."""
        return list(self._closed)

    def drop(self, count: int) -> None:
        """Forget the ``count`` oldest closed stored intervals (they were spooled)."""
        del self._closed[:count]

    def take(self) -> list[StoredInterval]:
        """Return the closed stored intervals, oldest first, and forget them."""
        out, self._closed = self._closed, []
        return out

    def records(self) -> Iterator[SampledInterval]:
        """Every sampled interval not yet taken (closed ones first, then the open one)."""
        for group in self._closed:
            yield from group.records
        if self._open is not None:
            yield from self._open.records

    @property
    def open_since_us(self) -> int | None:
        """When the open stored interval starts, µs since the epoch (None: none open)."""
        return None if self._open is None else self._open.start_us
