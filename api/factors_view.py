"""A job's facility energy, CO2e and phases as the job JSON shows them.

Both come from per-job rows maintained at ingest (``job_energy_hour`` grouped by the factors in
force, ``job_phase``), never from ``energy_interval``. Effective values are energy-weighted:
``pue = Σ facility / Σ IT`` and ``intensity = Σ facility_h × I_h / Σ facility_h`` over the job's
hours, so ``co2e = facility × intensity`` holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from jobenergy.collector.factors import FALLBACK, SERIES, base_factors, load_configs
from jobenergy.collector.models import JobEnergyHour, JobPhase
from jobenergy.core.carbon import WORLD_AVERAGE_G_PER_KWH
from jobenergy.core.units import UJ_PER_J, UJ_PER_KWH

_H = JobEnergyHour
_KIND_NAMES = {FALLBACK: "world-average fallback"}


@dataclass
class FactorGroup:
    """A job's hours that share the same factors."""

    pue: float
    pue_source: str
    g_per_kwh: float
    carbon_source: str
    energy_uj: int
    facility_uj: int
    co2e_ug: int


@dataclass
class Emissions:
    """What the job JSON reports about facility energy and CO2e."""

    pue: float
    pue_source: str
    facility_uj: int
    facility_energy_kwh: float
    carbon_intensity_g_per_kwh: float
    carbon_intensity_fallback: bool
    carbon_intensity_source: str
    carbon_intensity_sources: list[str] = field(default_factory=list)
    co2e_ug: int = 0
    co2e_kg: float = 0.0


def factor_groups(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[FactorGroup]]:
    """Return each job's hours grouped by the factors that applied (one query)."""
    keys = sorted(set(keys))
    out: dict[tuple[str, str], list[FactorGroup]] = defaultdict(list)
    for i in range(0, len(keys), 1000):
        stmt = (
            select(
                _H.cluster, _H.job_id, _H.pue, _H.pue_source, _H.carbon_g_per_kwh,
                _H.carbon_source, func.sum(_H.energy_uj), func.sum(_H.facility_uj),
                func.sum(_H.co2e_ug),
            )
            .where(tuple_(_H.cluster, _H.job_id).in_(keys[i : i + 1000]))
            .group_by(_H.cluster, _H.job_id, _H.pue, _H.pue_source, _H.carbon_g_per_kwh,
                      _H.carbon_source)
        )
        for cluster, job_id, pue, pue_src, ci, ci_src, energy, facility, co2e in session.execute(
            stmt
        ):
            out[(cluster, job_id)].append(
                FactorGroup(pue, pue_src, ci, ci_src, int(energy), int(facility), int(co2e))
            )
    return out


class ClusterLabels:
    """Human labels of carbon sources, per cluster (read once per request)."""

    def __init__(self, session: Session) -> None:
        """Remember the session; configs are loaded on first use."""
        self._session = session
        self._cache: dict[str, tuple[Any, Any]] = {}

    def configs(self, cluster: str) -> tuple[Any, Any]:
        """Return the cluster's config row and the defaults row."""
        if cluster not in self._cache:
            self._cache[cluster] = load_configs(self._session.connection(), cluster)
        return self._cache[cluster]

    def label(self, cluster: str, kind: str, g_per_kwh: float) -> str:
        """Describe one carbon source kind as used for ``cluster``."""
        own, _ = self.configs(cluster)
        if kind == FALLBACK:
            return f"world average {WORLD_AVERAGE_G_PER_KWH:g} g/kWh (IEA 2019), fallback"
        if kind == SERIES:
            return "imported series"
        if own is not None and own.carbon_source == kind and own.carbon_label:
            return str(own.carbon_label)
        return f"constant {g_per_kwh:g} g/kWh (server default)"


def emissions(cluster: str, groups: list[FactorGroup], labels: ClusterLabels) -> Emissions:
    """Combine a job's factor groups into effective values (see the module docstring)."""
    if not groups:
        pue, pue_source, ci, ci_source = base_factors(*labels.configs(cluster))
        return Emissions(
            pue=pue, pue_source=pue_source, facility_uj=0, facility_energy_kwh=0.0,
            carbon_intensity_g_per_kwh=ci, carbon_intensity_fallback=ci_source == FALLBACK,
            carbon_intensity_source=_KIND_NAMES.get(ci_source, ci_source),
            carbon_intensity_sources=[labels.label(cluster, ci_source, ci)],
        )
    energy = sum(g.energy_uj for g in groups)
    facility = sum(g.facility_uj for g in groups)
    pues = {g.pue for g in groups}
    cis = {g.g_per_kwh for g in groups}
    if len(pues) == 1:
        pue = pues.pop()
    else:
        pue = facility / energy if energy else max(g.pue for g in groups)
    if len(cis) == 1:
        ci = cis.pop()
    elif facility:
        ci = sum(g.facility_uj * g.g_per_kwh for g in groups) / facility
    else:
        ci = max(g.g_per_kwh for g in groups)
    kinds = sorted({part for g in groups for part in g.carbon_source.split("+")})
    sources = []
    for kind in kinds:
        value = next(g.g_per_kwh for g in groups if kind in g.carbon_source.split("+"))
        sources.append(labels.label(cluster, kind, value))
    facility_kwh = facility / UJ_PER_KWH
    return Emissions(
        pue=pue,
        pue_source=", ".join(sorted({g.pue_source for g in groups})),
        facility_uj=facility,
        facility_energy_kwh=facility_kwh,
        carbon_intensity_g_per_kwh=ci,
        carbon_intensity_fallback=FALLBACK in kinds,
        carbon_intensity_source=", ".join(_KIND_NAMES.get(k, k) for k in kinds),
        carbon_intensity_sources=sources,
        co2e_ug=sum(g.co2e_ug for g in groups),
        # Per group in float: exact to rounding for the common one-factor case.
        co2e_kg=sum(g.facility_uj / UJ_PER_KWH * g.g_per_kwh for g in groups) / 1000.0,
    )


def phases_for_jobs(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Return each job's phases: energy, samples, J per sample, metrics (one query)."""
    keys = sorted(set(keys))
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    p = JobPhase
    for i in range(0, len(keys), 1000):
        stmt = (
            select(p)
            .where(tuple_(p.cluster, p.job_id).in_(keys[i : i + 1000]))
            .order_by(p.cluster, p.job_id, p.first_at, p.phase, p.model)
        )
        for row in session.scalars(stmt):
            out[(row.cluster, row.job_id)].append({
                "phase": row.phase,
                "model": row.model or None,
                "energy_uj": row.energy_uj,
                "energy_kwh": row.energy_uj / UJ_PER_KWH,
                "samples": row.samples,
                "j_per_sample": (row.energy_uj / UJ_PER_J / row.samples
                                 if row.samples else None),
                "metrics": dict(row.metrics or {}),
                "tags": dict(row.tags or {}),
                "start": row.first_at,
                "end": row.last_at,
            })
    return out
