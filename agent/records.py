"""What attribution makes of one sampled interval: plain data, checked like the wire models.

The agent samples every ``interval_s`` but stores (and sends) coalesced intervals of up to
``store_interval_s`` (:mod:`.coalesce`). Each sampled interval is kept as these slotted
records, which mirror the wire models field for field (:class:`SourceSample` ↔
``SourceEnergy``, :class:`JobRecord` ↔ ``JobSample``, :class:`PhaseSample` ↔ ``PhaseRecord``,
:class:`SampledInterval` ↔ ``Interval``) but cost a few µs to build instead of a pydantic
validation each (32 jobs: ~0.6 ms a sample). What is stored is checked and written once per
stored interval by :mod:`.wire`, as the wire models would.

What could fail that validation at run time (not by construction) is checked per sample by
:func:`check_sampled`, with the schema's own messages: conservation per source, no psys
share, the interval's duration, one entry per source, and the schema's absurd-power bound.
Attribution calls it where it built the wire ``Interval`` before, so a bad sample fails its
tick as it did (the counters then stay where they were and the next sample covers both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobenergy.core.limits import BMC_NOT_ATTRIBUTED, MAX_INTERVAL_S, MAX_SOURCE_POWER_W


@dataclass(slots=True)
class SourceSample:
    """One source's energy over a sampled interval and its split (``SourceEnergy``)."""

    component: str
    source: str
    measured_uj: int
    jobs_uj: dict[str, int]
    unattributed_uj: int
    estimated: bool = False
    wraps: int = 0
    resets: int = 0
    device_name: str | None = None

    def wire(self) -> dict[str, Any]:
        """Return the ``SourceEnergy`` fields as a dict (validated by the caller); also
        :meth:`model_dump`, as for the wire model."""
        return {
            "component": self.component,
            "source": self.source,
            "device_name": self.device_name,
            "measured_uj": self.measured_uj,
            "jobs_uj": self.jobs_uj,
            "unattributed_uj": self.unattributed_uj,
            "estimated": self.estimated,
            "wraps": self.wraps,
            "resets": self.resets,
        }

    model_dump = wire


@dataclass(slots=True)
class JobRecord:
    """What the agent saw of one job during a sampled interval (``JobSample``)."""

    job_id: str
    uid: int | None = None
    cpus: int | None = None
    cpu_time_us: int = 0
    ended: bool = False
    step_ids: list[str] = field(default_factory=list)
    step_cpu_us: dict[str, int] = field(default_factory=dict)
    phase: str | None = None
    model: str | None = None
    alive_us: int | None = None

    def wire(self) -> dict[str, Any]:
        """Return the ``JobSample`` fields as a dict (validated by the caller); also
        :meth:`model_dump`."""
        return {
            "job_id": self.job_id,
            "uid": self.uid,
            "cpus": self.cpus,
            "cpu_time_us": self.cpu_time_us,
            "ended": self.ended,
            "step_ids": self.step_ids,
            "step_cpu_us": self.step_cpu_us,
            "phase": self.phase,
            "model": self.model,
            "alive_us": self.alive_us,
        }

    model_dump = wire


@dataclass(frozen=True, slots=True)
class PhaseSample:
    """A phase a job announced and closed (``PhaseRecord``), checked when it is written."""

    job_id: str
    phase: str
    model: str | None
    start: datetime
    end: datetime
    samples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """Return the ``PhaseRecord`` fields as a dict (checked by :mod:`.wire`)."""
        return {
            "job_id": self.job_id,
            "phase": self.phase,
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "samples": self.samples,
            "metrics": self.metrics,
            "tags": self.tags,
        }


@dataclass(slots=True)
class SampledInterval:
    """One sampled interval (``Interval``), as attribution made it.

    Attributes:
        start_us: ``start`` as µs since the epoch (exact: wire times have µs resolution).
        end_us: ``end`` likewise.
        gap: Energy measured while no agent ran (:mod:`.continuity`): never coalesced.
        counters: The agent's last counter readings after this interval (the counter record
            written when it is the last one spooled); None when not tracked.
    """

    start: datetime
    end: datetime
    start_us: int
    end_us: int
    sources: list[SourceSample]
    jobs: list[JobRecord] = field(default_factory=list)
    phases: list[PhaseSample] = field(default_factory=list)
    gap: bool = False
    counters: Any = None


def check_sampled(interval: SampledInterval) -> None:
    """Raise ValueError where the wire ``Interval`` would refuse ``interval`` at run time.

    Everything else the schema checks holds by construction (ids from the cgroup and map
    name patterns, non-negative deltas, one wrap per sample at most).
    """
    span_us = interval.end_us - interval.start_us
    if span_us <= 0:
        raise ValueError(f"interval end {interval.end} is not after start {interval.start}")
    if span_us > MAX_INTERVAL_S * 1_000_000:
        raise ValueError(
            f"interval of {span_us / 1e6:.0f} s is longer than {MAX_INTERVAL_S} s"
        )
    # The schema's bound: int(duration_s × MAX_SOURCE_POWER_W × 10⁶) µJ.
    limit_uj = int(span_us / 1e6 * MAX_SOURCE_POWER_W * 1_000_000)
    names: set[str] = set()
    for src in interval.sources:
        if src.source in names:
            raise ValueError(f"source listed twice in one interval: {src.source}")
        names.add(src.source)
        attributed = sum(src.jobs_uj.values())
        if attributed + src.unattributed_uj != src.measured_uj:
            raise ValueError(
                f"energy not conserved for source {src.source!r}: jobs {attributed} + "
                f"unattributed {src.unattributed_uj} != measured {src.measured_uj} µJ"
            )
        if src.component == "psys" and src.jobs_uj:
            raise ValueError("psys energy overlaps cpu/dram and is never attributed to jobs")
        if src.component == "bmc" and src.jobs_uj:
            raise ValueError(BMC_NOT_ATTRIBUTED)
        if src.measured_uj > limit_uj:
            raise ValueError(
                f"absurd energy for source {src.source!r}: {src.measured_uj} µJ in "
                f"{span_us / 1e6:.3f} s is above {MAX_SOURCE_POWER_W} W"
            )
