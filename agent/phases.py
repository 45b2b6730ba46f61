"""Per-job phases announced by the job itself (``jobenergy.client.phase``).

A job says "training of resnet50 starts", later "it ended, 50 000 samples, accuracy 0.76".
The agent keeps these as time segments per job and labels each interval of the job with the
phase that covered most of it: energy is split by phase on sample boundaries, never inside an
interval, so conservation is untouched.

What a job announces is bounded, so one job cannot grow the agent or the node's batches:
at most ``MAX_SEGMENTS_PER_JOB`` segments are held per job (open, closed and not yet sent,
or sent but still overlapping the interval being labelled; a ``begin`` beyond is refused),
at most ``MAX_PHASES_PER_INTERVAL`` closed phases ride in one interval (taken from the jobs
in turn, the rest wait for the next interval), and a segment is forgotten once it is sent
and can label no later interval.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from jobenergy.core.limits import PHASES

#: Segments held per job: open, closed and waiting to be sent, or still labelling.
MAX_SEGMENTS_PER_JOB = 64
#: Closed phases sent per interval, over all jobs (each at most ~130 KiB of JSON: one
#: begin and one end message of at most 64 KiB), far below ``max_batch_bytes``.
MAX_PHASES_PER_INTERVAL = 16


def _done_with(seg: Segment, before: datetime) -> bool:
    """True when ``seg`` was sent and ended before ``before``: it can label nothing later."""
    return seg.sent and seg.end is not None and seg.end <= before


class PhaseLimitError(ValueError):
    """A job holds as many phases as it may; it is told to annotate less often."""


@dataclass
class Segment:
    """One announced phase of one job."""

    phase: str
    model: str | None
    start: datetime
    end: datetime | None = None
    samples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    sent: bool = False

    def overlap_s(self, start: datetime, end: datetime, now: datetime) -> float:
        """Return how long this segment overlaps ``[start, end]``, seconds."""
        seg_end = self.end or now
        return max(0.0, (min(seg_end, end) - max(self.start, start)).total_seconds())


class PhaseBook:
    """Segments per job, fed by the annotation socket thread, read by the sampling loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._segments: dict[str, list[Segment]] = {}
        # Closed, not yet sent, per job in order; the dict's order is the jobs' turn.
        self._finished: dict[str, deque[Segment]] = {}

    def begin(
        self,
        job_id: str,
        phase: str,
        model: str | None,
        when: datetime,
        samples: int | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Open a phase; an open one of the same job is closed at ``when``.

        Raises:
            ValueError: ``phase`` is not one of ``PHASES``.
            PhaseLimitError: The job already holds ``MAX_SEGMENTS_PER_JOB`` segments.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        with self._lock:
            segments = self._segments.setdefault(job_id, [])
            if len(segments) >= MAX_SEGMENTS_PER_JOB:
                raise PhaseLimitError(
                    f"job {job_id} has {len(segments)} phases not yet sent (at most "
                    f"{MAX_SEGMENTS_PER_JOB}): annotate less often, or try again later"
                )
            if segments and segments[-1].end is None:
                self._close(job_id, segments[-1], when)
            segments.append(Segment(phase, model, when, samples=samples, tags=dict(tags or {})))

    def end(
        self,
        job_id: str,
        when: datetime,
        samples: int | None = None,
        metrics: dict[str, float] | None = None,
    ) -> bool:
        """Close the job's open phase; False when none is open."""
        with self._lock:
            segments = self._segments.get(job_id)
            if not segments or segments[-1].end is not None:
                return False
            seg = segments[-1]
            if samples is not None:
                seg.samples = samples
            seg.metrics.update(metrics or {})
            self._close(job_id, seg, when)
            return True

    def _close(self, job_id: str, seg: Segment, when: datetime) -> None:
        """Close ``seg`` at ``when`` and queue it for sending (the lock is held)."""
        seg.end = when
        self._finished.setdefault(job_id, deque()).append(seg)

    def label(self, job_id: str, start: datetime, end: datetime) -> tuple[str, str | None] | None:
        """Return (phase, model) covering most of ``[start, end]`` for the job, or None."""
        return self.labels([job_id], start, end).get(job_id)

    def labels(
        self, job_ids: list[str], start: datetime, end: datetime
    ) -> dict[str, tuple[str, str | None]]:
        """Return :meth:`label` of each job that has one, under one lock (one per sample)."""
        if not self._segments:  # no job announced anything: the usual case
            return {}
        out: dict[str, tuple[str, str | None]] = {}
        with self._lock:
            for job_id in job_ids:
                segments = self._segments.get(job_id)
                if not segments:
                    continue
                best, best_s = None, 0.0
                for seg in segments:
                    covered = seg.overlap_s(start, end, end)
                    if covered > best_s:
                        best, best_s = seg, covered
                if best is not None:
                    out[job_id] = (best.phase, best.model)
        return out

    def pop_finished(self, limit: int = MAX_PHASES_PER_INTERVAL) -> list[tuple[str, Segment]]:
        """Return at most ``limit`` closed segments for the next interval, jobs taking turns.

        Each job gives one segment per round, oldest first; a job served goes to the back of
        the line, so a job that closes phases in a flood delays only its own.
        """
        out: list[tuple[str, Segment]] = []
        with self._lock:
            while len(out) < limit and self._finished:
                for job_id in list(self._finished):
                    queue = self._finished.pop(job_id)
                    seg = queue.popleft()
                    seg.sent = True
                    out.append((job_id, seg))
                    if queue:
                        self._finished[job_id] = queue  # to the back of the line
                    if len(out) == limit:
                        break
        return out

    def held(self, job_id: str) -> int:
        """Return how many segments the job holds (counted against its cap)."""
        with self._lock:
            return len(self._segments.get(job_id, ()))

    def forget(self, job_ids: set[str], before: datetime) -> None:
        """Close open phases of jobs that are gone; drop segments that are done with.

        A segment is done with once it is sent and ended before ``before``: it can label no
        later interval. Segments not yet sent stay (and count against the job's cap).

        Args:
            job_ids: Jobs with a cgroup now.
            before: Start of the current interval (the jobs gone were last seen then).
        """
        with self._lock:
            for job_id in list(self._segments):
                segments = self._segments[job_id]
                last = segments[-1] if segments else None
                if job_id not in job_ids and last is not None and last.end is None:
                    if last.start <= before:
                        # The job ended (or was killed) inside the phase: close it where the
                        # job was last seen, so it is reported and not kept forever.
                        self._close(job_id, last, before)
                kept = [s for s in segments if not _done_with(s, before)]
                if kept:
                    self._segments[job_id] = kept
                else:
                    del self._segments[job_id]
