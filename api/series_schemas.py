"""Response models of the power series (``api/routes_series.py``).

Every series has the same time axis: ``t`` holds each bucket's start (epoch seconds), buckets
are ``step_s`` wide and ``[start, end)`` is the whole grid (ISO 8601, ``Z``). Energies are
integer µJ per bucket and add up exactly to the line's ``energy_uj``; ``power_w`` is each
bucket's mean power (energy / step), ``null`` where no interval covered the bucket (for a
node's attributed and unattributed lines: where the node measured nothing).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SeriesGrid(BaseModel):
    """The time axis of a series and how its step was chosen."""

    start: str | None = Field(description="start of the first bucket, ISO 8601 UTC (null: "
                              "no bucket, e.g. a job without times nor energy)")
    end: str | None = Field(description="end of the last bucket, ISO 8601 UTC")
    step_s: int = Field(description="bucket width, s")
    requested_step_s: int | None = Field(description="the step asked for (null: chosen)")
    step_raised: bool = Field(
        description="the requested step gave more than max_points buckets (or was finer than "
        "hourly data): raised to the smallest step that fits")
    max_points: int
    t: list[int] = Field(description="each bucket's start, epoch seconds")
    retained_from: str | None = Field(
        description="raw intervals before this time were dropped (retention); null: none")


class JobSeriesLine(BaseModel):
    """One node's one source of a job (hourly data: one line, component ``total``)."""

    node: str | None
    component: str
    source: str
    energy_uj: int
    bucket_energy_uj: list[int]
    power_w: list[float | None]


class SeriesPhase(BaseModel):
    """An announced phase of the job, from its first to its last interval (for shading)."""

    phase: str
    model: str | None
    start: str | None
    end: str | None


class JobSeries(SeriesGrid):
    """``GET /api/v1/jobs/{job_id}/series``."""

    cluster: str
    job_id: str
    resolution: Literal["interval", "minute", "hour"] = Field(
        description="interval: from the raw intervals, per node and source; minute: the "
        "same lines, before retained_from from the job's per-minute energy (steps of whole "
        "minutes) and after it from the raw intervals; hour: a window over 8 days, or "
        "intervals dropped before minutes were kept: one line from the job's hourly energy")
    energy_uj: int = Field(description="sum of the lines")
    lines: list[JobSeriesLine]
    phases: list[SeriesPhase]


class NodeSeriesLine(BaseModel):
    """One component of a node: measured = attributed + unattributed, bucket by bucket."""

    kind: Literal["measured", "attributed", "unattributed"]
    component: str
    energy_uj: int
    bucket_energy_uj: list[int]
    power_w: list[float | None]


class NodeSeries(SeriesGrid):
    """``GET /api/v1/nodes/{node}/series``."""

    cluster: str
    node: str
    resolution: Literal["interval", "hour"] = Field(
        description="interval: from the raw intervals; hour: from the node's hourly energy "
        "(steps of whole hours: by default over more than 2 days, always over more than 8 "
        "days or before the raw intervals' retention)")
    lines: list[NodeSeriesLine]


class ClusterSeriesLine(BaseModel):
    """One component's measured energy over the whole cluster."""

    component: str
    energy_uj: int
    bucket_energy_uj: list[int]
    power_w: list[float | None]


class ClusterSeries(SeriesGrid):
    """``GET /api/v1/clusters/{cluster}/series``: measured power of every node (CPU, DRAM,
    GPU; ``psys`` overlaps them and is left out), with the factors in force."""

    cluster: str
    resolution: Literal["interval", "hour"] = Field(
        description="interval: from the raw intervals; hour: the sum of the nodes' hourly "
        "energy (as for a node's series)")
    nodes: int = Field(description="nodes of the cluster that ever sent intervals")
    energy_uj: int
    bucket_energy_uj: list[int]
    power_w: list[float | None]
    facility_power_w: list[float | None] = Field(description="power_w × pue")
    pue: list[float] = Field(description="time-weighted mean PUE over each bucket")
    carbon_g_per_kwh: list[float] = Field(
        description="time-weighted mean carbon intensity over each bucket, g CO2e/kWh")
    lines: list[ClusterSeriesLine] = Field(description="the same per component")
