"""Response models of the read API (energy in integer µJ; kWh and kg CO2e only as floats)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field


class DeviceEnergy(BaseModel):
    """One GPU's energy for a job."""

    node: str
    source: str
    device_name: str | None
    component: str
    energy_uj: int


class JobQuality(BaseModel):
    """How complete and how direct a job's measurement is."""

    sources: list[str] = Field(description="energy sources (RAPL domains, GPUs) seen")
    samples: int = Field(description="most intervals any one source contributed")
    covered_s: float = Field(description="measured time: per node the best-covered source, "
                             "then the least-covered node")
    elapsed_s: float | None
    coverage: float | None = Field(description="covered_s / elapsed_s when both are known")
    wraps: int = Field(description="counter wraps handled during the job")
    resets: int = Field(description="counter resets (driver reload, reboot) during the job")
    estimated_uj: int = Field(description="energy integrated from power, not a counter")
    estimated_components: list[str]
    unmeasured: bool = Field(
        default=False,
        description="no energy source covered the job: it has no per-source energy at all while "
        "an agent saw it or a node of it has no counters (energy 0 means unknown, not zero)")
    unmeasured_nodes: list[str] = Field(
        default_factory=list,
        description="nodes of the job where no source covered it: its agent saw the job but "
        "gave it no energy share, or the node's latest interval had no sources")
    bmc_reconciled: bool = Field(
        default=False,
        description="a BMC reconciled the job on every node where it has energy: it holds a "
        "share of each one's `other` (wall energy beyond cpu + dram + gpu), so energy_uj is "
        "its share of the nodes' wall energy. Derived from the job's own totals (no extra "
        "read): a node whose BMC windows were all flagged (below the measured sum) or whose "
        "`other` was exactly 0 does not count")
    bmc_nodes: list[str] = Field(
        default_factory=list,
        description="nodes of the job where it holds a share of the BMC's `other`")


class PhaseOut(BaseModel):
    """Energy of a job while it announced a phase (in-job annotations), with its records."""

    phase: str
    model: str | None
    energy_uj: int
    energy_kwh: float
    samples: int | None = Field(description="samples the closed phase records processed")
    j_per_sample: float | None
    metrics: dict[str, float]
    tags: dict[str, str]
    start: datetime | None
    end: datetime | None


class StepOut(BaseModel):
    """A Slurm job step's share of the job's energy (split by the steps' CPU time)."""

    step: str = Field(description='"batch", "extern", "0", ...; last, "outside": the job\'s '
                      "energy in intervals without step CPU time (job − Σ steps)")
    energy_uj: int
    energy_kwh: float
    by_component: dict[str, int]


class SlurmStepOut(BaseModel):
    """A step of the job as Slurm's accounting lists it (from the Slurm sync)."""

    step: str = Field(description='as sacct prints it after the job id: "batch", "0", "0+1"')
    name: str | None


class JobOut(BaseModel):
    """A job with its energy, facility energy and emissions."""

    job_id: str = Field(description="Slurm's raw id (JobIDRaw): what the job is filed under")
    sacct_job_id: str = Field(
        description="the id as sacct prints it (JobID): 1234_5 for a task of array 1234, "
        "1234+1 for component 1 of het job 1234, else job_id")
    cluster: str
    user: str | None
    uid: int | None
    account: str | None
    partition: str | None
    name: str | None
    state: str | None
    exit_code: str | None
    nodes: list[str]
    gpus: list[str] | None
    start: datetime | None
    end: datetime | None
    elapsed_s: float | None
    final: bool = Field(
        default=False,
        description="the energy will not change: the job has ended and every node of it (from "
        "Slurm, or seen by agents) has had intervals ingested up to or past its end")
    energy_uj: int = Field(description="cpu + dram + gpu, µJ (psys is never attributed)")
    by_component: dict[str, int]
    by_node: dict[str, dict[str, int]]
    devices: list[DeviceEnergy]
    energy_kwh: float
    pue: float = Field(description="effective PUE: facility / IT energy over the job's hours")
    pue_source: str = Field(description="constant, default or series (comma separated)")
    facility_uj: int
    facility_energy_kwh: float
    carbon_intensity_g_per_kwh: float = Field(
        description="effective intensity, weighted by each hour's facility energy")
    carbon_intensity_fallback: bool = Field(
        description="the world average 475 g/kWh was used for some of the energy")
    carbon_intensity_source: str = Field(
        description="constant, region, mix, series or world-average fallback (comma separated)")
    carbon_intensity_sources: list[str] = Field(description="each source with its data origin")
    co2e_ug: int
    co2e_kg: float
    model: str | None
    phase: str | None
    tags: dict[str, str]
    phases: list[PhaseOut]
    array_job_id: str | None = None
    array_task_id: int | None = None
    het_job_id: str | None = None
    het_job_offset: int | None = None
    alloc_tres: str | None = Field(
        default=None, description="AllocTRES as sacct prints it (from the Slurm sync)")
    kill_requid: int | None = Field(
        default=None, description='uid that cancelled the job (sacct: "CANCELLED by <uid>")')
    slurm_steps: list[SlurmStepOut] = Field(
        default_factory=list,
        description="the job's steps as Slurm's accounting lists them, in its order (from the "
        "Slurm sync; empty when not synced): steps carries their energy by the same name")
    steps: list[StepOut] = Field(
        description="energy per Slurm step, from the step cgroups' CPU time; empty when "
        "unknown. Intervals without step CPU time add to no step: the \"outside\" entry, "
        "last, carries that rest, so the steps add up to energy_uj exactly.")
    quality: JobQuality


class JobList(BaseModel):
    """A page of jobs."""

    jobs: list[JobOut]
    total: int
    limit: int
    offset: int
    next: str | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="opaque cursor: pass it as `after` (same filters) for the jobs that follow "
        "this page; absent on the last page")
    total_exact: bool = Field(
        default=True, exclude_if=lambda value: value,
        description="false (only then present) when the jobs were not counted (count=false): "
        "total is then a lower bound, the jobs up to the end of this page (when it has any) "
        "and one more if `next`")


class NodeComponentEnergy(BaseModel):
    """A node's totals for one component; ``measured == attributed + unattributed``."""

    cluster: str
    node: str
    component: str
    measured_uj: int
    unattributed_uj: int
    attributed_uj: int
    intervals: int
    first_at: datetime | None
    last_at: datetime | None


class NodeRefusals(BaseModel):
    """Batches of a node that the collector refused (4xx answers to ``POST /api/v1/batches``)."""

    cluster: str = Field(description='"" when the refused body did not say')
    node: str = Field(description='"" when the refused body did not say')
    refused: int = Field(description="refused batches, conflicts included")
    conflicts: int = Field(description="409: a batch key already stored with other content")
    first_at: datetime
    last_at: datetime
    last_status: int
    last_reason: str


class NodeList(BaseModel):
    """Per node and component energy totals, and the nodes' refused batches."""

    nodes: list[NodeComponentEnergy]
    refusals: list[NodeRefusals] = Field(
        default_factory=list, description="per (cluster, node) with refused batches")


#: Where a leaderboard's or summary's figures come from (collector/rollups.py).
Source = Annotated[Literal["live", "rollup"], Field(
    description="live: every job read now; rollup: materialised in the background (all "
                "time, or a period), exact as of as_of")]
AsOf = Annotated[datetime | None, Field(
    description="rollup: jobs changed after this time are counted as they were; with "
                "period, the window ends here")]


class LeaderboardRow(BaseModel):
    """One (model, phase) of the model leaderboard."""

    model: str
    phase: str | None
    jobs: int
    energy_kwh: float = Field(description="total IT energy (same as total_energy_kwh)")
    total_energy_kwh: float
    median_energy_kwh: float
    mean_energy_kwh: float
    facility_energy_kwh: float
    co2e_kg: float
    gpu_hours: float
    kwh_per_gpu_hour: float | None
    samples: int | None
    j_per_sample: float | None = Field(description="over the jobs that reported samples")
    source: Source = "live"
    as_of: AsOf = None


class SummaryRow(BaseModel):
    """Totals of one group of jobs."""

    group: str | None
    jobs: int
    energy_kwh: float
    gpu_energy_kwh: float
    facility_energy_kwh: float
    co2e_kg: float
    gpu_hours: float
    source: Source = "live"
    as_of: AsOf = None


class NodeReconciliation(BaseModel):
    """A node's wall energy (BMC) against its counters over a period (agent/reconcile.py)."""

    cluster: str
    node: str
    start: datetime
    end: datetime
    bmc_uj: int = Field(description="the BMC's energy of the node, µJ")
    bmc_kwh: float
    measured_uj: int = Field(description="cpu + dram + gpu (RAPL and GPU counters), µJ")
    measured_kwh: float
    other_uj: int = Field(description="BMC energy beyond cpu + dram + gpu, attributed to jobs")
    other_kwh: float
    ratio: float | None = Field(description="bmc_uj / measured_uj (None without both)")
    flagged_intervals: int = Field(
        description="stored intervals with a BMC figure below the measured sum")
    covered: bool = Field(description="a BMC reported for this node in the period")
