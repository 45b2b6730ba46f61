"""Per-job phases announced by the job itself (``jobenergy.client.phase``).

A job says "training of resnet50 starts", later "it ended, 50 000 samples, accuracy 0.76".
The agent keeps these as time segments per job and labels each interval of the job with the
phase that covered most of it: energy is split by phase on sample boundaries, never inside an
interval, so conservation is untouched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

PHASES = ("training", "inference", "other")


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

    def overlap_s(self, start: datetime, end: datetime, now: datetime) -> float:
        """Return how long this segment overlaps ``[start, end]``, seconds."""
        seg_end = self.end or now
        return max(0.0, (min(seg_end, end) - max(self.start, start)).total_seconds())


class PhaseBook:
    """Segments per job, fed by the annotation socket thread, read by the sampling loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._segments: dict[str, list[Segment]] = {}
        self._finished: list[tuple[str, Segment]] = []

    def begin(
        self,
        job_id: str,
        phase: str,
        model: str | None,
        when: datetime,
        samples: int | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Open a phase; an open one of the same job is closed at ``when``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        with self._lock:
            segments = self._segments.setdefault(job_id, [])
            if segments and segments[-1].end is None:
                segments[-1].end = when
                self._finished.append((job_id, segments[-1]))
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
            seg.end = when
            if samples is not None:
                seg.samples = samples
            seg.metrics.update(metrics or {})
            self._finished.append((job_id, seg))
            return True

    def label(self, job_id: str, start: datetime, end: datetime) -> tuple[str, str | None] | None:
        """Return (phase, model) covering most of ``[start, end]`` for the job, or None."""
        with self._lock:
            segments = self._segments.get(job_id)
            if not segments:
                return None
            best, best_s = None, 0.0
            for seg in segments:
                covered = seg.overlap_s(start, end, end)
                if covered > best_s:
                    best, best_s = seg, covered
            return (best.phase, best.model) if best else None

    def pop_finished(self) -> list[tuple[str, Segment]]:
        """Return and forget the segments closed since the last call (for the next batch)."""
        with self._lock:
            done, self._finished = self._finished, []
            return done

    def forget(self, job_ids: set[str], before: datetime) -> None:
        """Close open phases of jobs that are gone; drop segments that cannot label intervals.

        Args:
            job_ids: Jobs with a cgroup now.
            before: Start of the current interval (the jobs gone were last seen then).
        """
        with self._lock:
            for job_id in list(self._segments):
                if job_id in job_ids:
                    continue
                last = self._segments[job_id][-1]
                if last.end is None and last.start <= before:
                    # The job ended (or was killed) inside the phase: close it where the job
                    # was last seen, so it is reported and not kept forever.
                    last.end = before
                    self._finished.append((job_id, last))
                segments = [s for s in self._segments[job_id] if s.end is None or s.end > before]
                if segments:
                    self._segments[job_id] = segments
                else:
                    del self._segments[job_id]
