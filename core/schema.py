"""The wire contract between agents, Slurm glue and the collector (pydantic v2).

Versioned by ``schema_version``; a collector rejects versions it does not know. Unknown
fields are rejected rather than dropped, so a typo never silently loses data. Energy is
integer µJ; times are epoch seconds (floats) or ISO 8601 strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from jobenergy.core.limits import (  # noqa: F401 - the contract's limits, re-exported
    ATTRIBUTED_COMPONENTS,
    BMC_NOT_ATTRIBUTED,
    COMPONENTS,
    JOB_ID_PATTERN,
    MAX_ALIVE_US,
    MAX_COUNT,
    MAX_DEVICE_NAME,
    MAX_ENERGY_UJ,
    MAX_INTERVAL_S,
    MAX_INTERVALS_PER_BATCH,
    MAX_JOB_GPUS,
    MAX_JOB_ID,
    MAX_JOB_NODES,
    MAX_JOB_TAGS,
    MAX_JOBS_PER_SOURCE,
    MAX_KEY,
    MAX_NAME,
    MAX_PHASE_ITEMS,
    MAX_SLURM_STEPS,
    MAX_SOURCE_POWER_W,
    MAX_SOURCES_PER_INTERVAL,
    MAX_STEP_NAME,
    MAX_STEPS_PER_JOB,
    MAX_UID,
    MAX_WRAPS,
    NO_NUL_PATTERN,
    NODE_ONLY_COMPONENTS,
    SCHEMA_VERSION,
    TIME_MAX,
    TIME_MIN,
    check_time,
)
from jobenergy.core.steps import OUTSIDE_STEP, check_step_split, job_energy_by_component

#: Components a source can belong to (``limits.COMPONENTS``). ``psys`` (RAPL platform
#: domain) overlaps the package and DRAM domains: it is recorded per node for cross-checks
#: and never attributed to a job.
Component = Literal["cpu", "dram", "gpu", "psys", "bmc", "other"]


def Text(max_length: int, min_length: int = 0) -> Any:
    """Return a ``str`` type (for annotations) of at most ``max_length`` characters, no NUL."""
    return Annotated[
        str, Field(min_length=min_length, max_length=max_length, pattern=NO_NUL_PATTERN)
    ]


EnergyUJ = Annotated[int, Field(ge=0, le=MAX_ENERGY_UJ, strict=True)]
JobId = Annotated[str, Field(min_length=1, max_length=MAX_JOB_ID, pattern=JOB_ID_PATTERN)]
Name = Text(MAX_NAME, min_length=1)
StepName = Text(MAX_STEP_NAME, min_length=1)


#: Slurm and our agents speak UTC epoch seconds: naive times are UTC; only 1970..2100.
UtcTime = Annotated[datetime, AfterValidator(check_time)]


class WireModel(BaseModel):
    """Base for wire models: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceEnergy(WireModel):
    """One energy source's measured delta over an interval and how it was attributed.

    Invariant (checked here, so a collector never stores a non-conserving record):
    ``sum(jobs_uj.values()) + unattributed_uj == measured_uj``.
    """

    component: Component
    source: Name  # e.g. "package-0", "package-0/dram", "gpu/GPU-5e0b..."
    device_name: Text(MAX_DEVICE_NAME) | None = None  # e.g. "NVIDIA H100 80GB HBM3"
    measured_uj: EnergyUJ
    jobs_uj: dict[JobId, EnergyUJ] = Field(default_factory=dict, max_length=MAX_JOBS_PER_SOURCE)
    unattributed_uj: EnergyUJ
    estimated: bool = False  # power integrated over time instead of a hardware energy counter
    wraps: int = Field(default=0, ge=0, le=MAX_WRAPS)
    resets: int = Field(default=0, ge=0, le=MAX_WRAPS)

    @model_validator(mode="after")
    def _conserved(self) -> SourceEnergy:
        attributed = sum(self.jobs_uj.values())
        if attributed + self.unattributed_uj != self.measured_uj:
            raise ValueError(
                f"energy not conserved for source {self.source!r}: jobs {attributed} + "
                f"unattributed {self.unattributed_uj} != measured {self.measured_uj} µJ"
            )
        if self.component == "psys" and self.jobs_uj:
            raise ValueError("psys energy overlaps cpu/dram and is never attributed to jobs")
        if self.component == "bmc" and self.jobs_uj:
            raise ValueError(BMC_NOT_ATTRIBUTED)
        return self


Phase = Literal["training", "inference", "other"]
ShortText = Text(MAX_NAME)
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


#: Optional wire fields a collector stores, named in its answer to each batch (``accepts``):
#: an agent sends them only to a collector that said so, so a newer agent never has its
#: batches refused by an older collector (unknown fields are an error).
OPTIONAL_FIELDS: tuple[str, ...] = ("step_uj",)


class JobSample(WireModel):
    """What the agent saw of one job during an interval (metadata for quality/fallbacks)."""

    job_id: JobId
    uid: int | None = Field(default=None, ge=0, le=MAX_UID)
    cpus: int | None = Field(default=None, ge=0, le=MAX_COUNT)  # allocated CPUs (cpuset)
    cpu_time_us: int = Field(default=0, ge=0, le=MAX_ENERGY_UJ)
    ended: bool = False  # the job's cgroup vanished during this interval
    step_ids: list[Text(MAX_STEP_NAME)] = Field(default_factory=list, max_length=MAX_STEPS_PER_JOB)
    # CPU time each Slurm step ("batch", "extern", "0", ...) used during the interval, µs,
    # from the step cgroups; the collector splits the job's energy over its steps by it.
    step_cpu_us: dict[StepName, Annotated[int, Field(ge=0, le=MAX_ENERGY_UJ, strict=True)]] = Field(
        default_factory=dict, max_length=MAX_STEPS_PER_JOB
    )
    # The phase the job announced (jobenergy.client) covering most of the interval.
    phase: Phase | None = None
    model: ShortText | None = None
    # How long the job existed inside the interval, µs, when it started or ended within it
    # (its energy there is prorated: DESIGN.md decision 16); None: all of the interval.
    alive_us: int | None = Field(default=None, ge=0, le=MAX_ALIVE_US)
    # The job's energy per component split over its steps, µJ, when the agent merged sampled
    # intervals in which several steps were busy (core/steps.py's rule, applied per sampled
    # interval and summed); None: the collector splits by ``step_cpu_us``. Left out of the
    # JSON when None, so the bytes of every other interval are what they always were.
    step_uj: dict[Component, dict[StepName, EnergyUJ]] | None = Field(
        default=None, max_length=len(COMPONENTS), exclude_if=lambda value: value is None
    )

    @model_validator(mode="after")
    def _steps_bounded(self) -> JobSample:
        if OUTSIDE_STEP in self.step_cpu_us:
            raise ValueError(f"job {self.job_id}: {OUTSIDE_STEP!r} is not a Slurm step")
        for component, parts in (self.step_uj or {}).items():
            if len(parts) > MAX_STEPS_PER_JOB:
                raise ValueError(
                    f"job {self.job_id}: {len(parts)} steps for {component}, at most "
                    f"{MAX_STEPS_PER_JOB}"
                )
        return self


class PhaseRecord(WireModel):
    """A phase a job announced and closed, with what it processed."""

    job_id: JobId
    phase: Phase
    model: ShortText | None = None
    start: UtcTime
    end: UtcTime
    samples: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    metrics: dict[Text(MAX_KEY), FiniteFloat] = Field(default_factory=dict,
                                                   max_length=MAX_PHASE_ITEMS)
    tags: dict[Text(MAX_KEY), ShortText] = Field(default_factory=dict, max_length=MAX_PHASE_ITEMS)


class Interval(WireModel):
    """Energy of every source on a node between two consecutive samples."""

    start: UtcTime
    end: UtcTime
    sources: list[SourceEnergy] = Field(max_length=MAX_SOURCES_PER_INTERVAL)
    jobs: list[JobSample] = Field(default_factory=list, max_length=MAX_JOBS_PER_SOURCE)
    phases: list[PhaseRecord] = Field(default_factory=list, max_length=MAX_JOBS_PER_SOURCE)

    @model_validator(mode="after")
    def _sane(self) -> Interval:
        duration_s = (self.end - self.start).total_seconds()
        if duration_s <= 0:
            raise ValueError(f"interval end {self.end} is not after start {self.start}")
        if duration_s > MAX_INTERVAL_S:
            raise ValueError(f"interval of {duration_s:.0f} s is longer than {MAX_INTERVAL_S} s")
        names = [src.source for src in self.sources]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"source listed twice in one interval: {', '.join(twice)}")
        limit_uj = int(duration_s * MAX_SOURCE_POWER_W * 1_000_000)
        for src in self.sources:
            if src.measured_uj > limit_uj:
                raise ValueError(
                    f"absurd energy for source {src.source!r}: {src.measured_uj} µJ in "
                    f"{duration_s:.3f} s is above {MAX_SOURCE_POWER_W} W"
                )
        for job in self.jobs:
            if job.step_uj is not None:
                check_step_split(job.job_id, job.step_uj, job.step_cpu_us,
                                 job_energy_by_component(
                                     ((s.component, s.jobs_uj) for s in self.sources),
                                     job.job_id))
        return self


class Batch(WireModel):
    """A node's intervals, pushed as one idempotent unit keyed (cluster, node, boot_id, seq)."""

    schema_version: Literal[1]
    cluster: Name
    node: Name
    boot_id: Text(64, min_length=1)
    seq: int = Field(ge=0, le=2**62)
    agent_version: Text(64) | None = None
    intervals: list[Interval] = Field(max_length=MAX_INTERVALS_PER_BATCH)

    @model_validator(mode="after")
    def _ordered(self) -> Batch:
        # A node measures each source once over any span of time: intervals follow each other.
        for before, after in zip(self.intervals, self.intervals[1:], strict=False):
            if after.start < before.end:
                raise ValueError(
                    f"intervals overlap or are out of order: one starts at "
                    f"{after.start.isoformat()} before the previous ends at "
                    f"{before.end.isoformat()}"
                )
        return self


class SlurmStep(WireModel):
    """One step of a job as Slurm's accounting lists it."""

    id: StepName  # as sacct prints it after the job id: "batch", "extern", "0", "0+1"
    name: Text(255) | None = None  # the step's name ("batch", the command of an srun)


class JobEvent(WireModel):
    """A job start or end, sent by the Slurm prolog/epilog (or the demo's scheduler), or by
    the Slurm sync from sacct (``source = "sacct"``: authoritative, collector/events.py)."""

    cluster: Name
    job_id: JobId
    event: Literal["start", "end"]
    time: UtcTime
    user: Text(64) | None = None
    uid: int | None = Field(default=None, ge=0, le=MAX_UID)
    account: Text(64) | None = None
    partition: Text(64) | None = None
    name: Text(255) | None = None
    # Each capped per job once merged with what is stored, as sets (collector/events.py).
    nodes: list[Text(255)] | None = Field(default=None, max_length=MAX_JOB_NODES)
    gpus: list[Text(64)] | None = Field(default=None, max_length=MAX_JOB_GPUS)
    comment: Text(4_096) | None = None
    state: Text(32) | None = None
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**32 - 1)] | Text(16) | None = None
    tags: dict[Text(64), Text(255)] = Field(default_factory=dict, max_length=MAX_JOB_TAGS)
    # What only Slurm's accounting knows (the sync sends them): "sacct" marks an event whose
    # times, state, exit code, nodes and names are Slurm's own.
    source: Literal["hook", "sacct"] | None = None
    alloc_tres: Text(1024) | None = None  # AllocTRES as sacct prints it
    kill_requid: int | None = Field(default=None, ge=0, le=MAX_UID)  # "CANCELLED by <uid>"
    steps: list[SlurmStep] | None = Field(default=None, max_length=MAX_SLURM_STEPS)
