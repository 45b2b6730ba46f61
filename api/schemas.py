"""Response models of the read API (energy in integer µJ; kWh and kg CO2e only as floats)."""

from __future__ import annotations

from datetime import datetime

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


class JobOut(BaseModel):
    """A job with its energy, facility energy and emissions."""

    job_id: str
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
    energy_uj: int = Field(description="cpu + dram + gpu, µJ (psys is never attributed)")
    by_component: dict[str, int]
    by_node: dict[str, dict[str, int]]
    devices: list[DeviceEnergy]
    energy_kwh: float
    pue: float
    facility_energy_kwh: float
    carbon_intensity_g_per_kwh: float
    carbon_intensity_fallback: bool
    carbon_intensity_source: str
    co2e_kg: float
    tags: dict[str, str]
    quality: JobQuality


class JobList(BaseModel):
    """A page of jobs."""

    jobs: list[JobOut]
    total: int
    limit: int
    offset: int


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


class NodeList(BaseModel):
    """Per node and component energy totals."""

    nodes: list[NodeComponentEnergy]
