"""Which PUE and carbon intensity hold for a cluster at a given hour.

Resolution, for each factor and UTC hour (DESIGN.md decision 9):

1. the cluster's imported series where it covers the hour (time-weighted mean of its steps over
   the hour; an hour only partly covered takes the base value for the rest);
2. the cluster's own base: PUE constant; carbon ``constant``, ``region`` or ``mix`` (resolved to
   g/kWh when it was set);
3. the server's defaults (``jobenergy server --pue/--carbon-intensity``, stored as the row of
   cluster ``""`` so that ingest and recomputation read the same values; seeded while the
   database holds no energy, never rewritten by a later start: ``clusters.seed_defaults``);
4. PUE 1.0 and the world average 475 g/kWh, the latter flagged ``fallback``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, select

from jobenergy.collector.models import ClusterConfig, FactorPoint
from jobenergy.core.carbon import HOUR, WORLD_AVERAGE_G_PER_KWH, step_mean

#: Cluster key of the row holding the server's defaults (no real cluster name is empty).
DEFAULTS = ""

SERIES = "series"
FALLBACK = "fallback"
DEFAULT = "default"


@dataclass(frozen=True)
class HourFactors:
    """The factors in force over one hour and where they came from."""

    pue: float
    pue_source: str
    carbon_g_per_kwh: float
    carbon_source: str


@dataclass
class ClusterFactors:
    """A cluster's base factors and the series steps loaded for a time range."""

    pue: float
    pue_source: str
    carbon_g_per_kwh: float
    carbon_source: str
    pue_steps: list[tuple[datetime, datetime, float]] = field(default_factory=list)
    carbon_steps: list[tuple[datetime, datetime, float]] = field(default_factory=list)

    def at_hour(self, hour: datetime) -> HourFactors:
        """Return the factors over ``[hour, hour + 1 h)``."""
        pue, pue_source = _blend(self.pue_steps, hour, self.pue, self.pue_source)
        carbon, carbon_source = _blend(
            self.carbon_steps, hour, self.carbon_g_per_kwh, self.carbon_source
        )
        return HourFactors(max(pue, 1.0), pue_source, carbon, carbon_source)


def _blend(
    steps: list[tuple[datetime, datetime, float]], hour: datetime, base: float, base_source: str
) -> tuple[float, str]:
    if not steps:
        return base, base_source
    covered, weighted = step_mean(steps, hour, hour + HOUR)
    if covered <= 0:
        return base, base_source
    span = HOUR.total_seconds()
    if covered >= span:
        return weighted / span, SERIES
    return (weighted + (span - covered) * base) / span, f"{SERIES}+{base_source}"


def base_factors(
    own: ClusterConfig | None, defaults: ClusterConfig | None
) -> tuple[float, str, float, str]:
    """Return ``(pue, pue_source, g_per_kwh, carbon_source)`` before any series."""
    if own is not None and own.pue is not None:
        pue, pue_source = own.pue, "constant"
    elif defaults is not None and defaults.pue is not None:
        pue, pue_source = defaults.pue, DEFAULT
    else:
        pue, pue_source = 1.0, DEFAULT
    if own is not None and own.carbon_g_per_kwh is not None and own.carbon_source != SERIES:
        carbon, carbon_source = own.carbon_g_per_kwh, own.carbon_source or "constant"
    elif defaults is not None and defaults.carbon_g_per_kwh is not None:
        carbon, carbon_source = defaults.carbon_g_per_kwh, "constant"
    else:
        carbon, carbon_source = WORLD_AVERAGE_G_PER_KWH, FALLBACK
    return pue, pue_source, carbon, carbon_source


def load_configs(
    conn: Connection, cluster: str
) -> tuple[ClusterConfig | None, ClusterConfig | None]:
    """Return the cluster's config row and the defaults row (either may be None)."""
    rows = {
        row.cluster: row
        for row in conn.execute(
            select(ClusterConfig).where(ClusterConfig.cluster.in_([cluster, DEFAULTS]))
        )
    }
    return rows.get(cluster), rows.get(DEFAULTS)


def load_factors(
    conn: Connection, cluster: str, start: datetime, end: datetime
) -> ClusterFactors:
    """Load what resolves ``cluster``'s factors over ``[start, end)`` (steps overlapping it)."""
    own, defaults = load_configs(conn, cluster)
    pue, pue_source, carbon, carbon_source = base_factors(own, defaults)
    factors = ClusterFactors(pue, pue_source, carbon, carbon_source)
    fp = FactorPoint
    steps = conn.execute(
        select(fp.factor, fp.start_at, fp.end_at, fp.value)
        .where(fp.cluster == cluster, fp.start_at < end, fp.end_at > start)
        .order_by(fp.factor, fp.start_at)
    )
    for factor, p_start, p_end, value in steps:
        target = factors.pue_steps if factor == "pue" else factors.carbon_steps
        target.append((_aware(p_start), _aware(p_end), value))
    return factors


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def hours_span(hours: Iterable[datetime]) -> tuple[datetime, datetime]:
    """Return ``[first hour, last hour + 1 h)`` of a non-empty set of hours."""
    ordered = sorted(hours)
    return ordered[0], ordered[-1] + HOUR
