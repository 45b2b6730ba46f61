"""Per-cluster PUE and carbon-intensity sources: validation, storage and recomputation.

Every change runs in the caller's transaction together with the recomputation of the hours it
affects (``collector/hours.py: recompute``), so stored facility energy and CO2e always match
the stored factors; on bad input nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection, delete, func, select

from jobenergy.collector import factor_changes
from jobenergy.collector.factors import DEFAULTS, SERIES, base_factors, load_configs
from jobenergy.collector.hours import recompute
from jobenergy.collector.models import ClusterConfig, FactorPoint, JobEnergyHour
from jobenergy.collector.sql import dialect_insert, lock_factors
from jobenergy.core import carbon_data
from jobenergy.core.carbon import mix_intensity_g_per_kwh
from jobenergy.core.schema import UtcTime

if TYPE_CHECKING:
    from jobenergy.collector.settings import ServerSettings

logger = logging.getLogger(__name__)

Factor = Literal["pue", "carbon"]
MAX_G_PER_KWH = 5_000.0
MAX_PUE = 10.0
VALUE_LIMITS = {"pue": (1.0, MAX_PUE), "carbon": (0.0, MAX_G_PER_KWH)}


class CarbonSetting(BaseModel):
    """Body of ``PUT /api/v1/clusters/{cluster}/carbon``.

    ``constant``: ``g_per_kwh``; ``region``: ``country`` (ISO alpha-3) and optional ``year``
    (latest otherwise); ``mix``: ``shares`` per source (percent or fractions); ``series``: only
    the imported series (the world average, flagged, outside it); ``default``: the server's.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: Literal["constant", "region", "mix", "series", "default"]
    g_per_kwh: float | None = Field(default=None, ge=0.0, le=MAX_G_PER_KWH)
    country: Annotated[str, Field(min_length=2, max_length=64)] | None = None
    year: int | None = Field(default=None, ge=1900, le=2100)
    shares: dict[Annotated[str, Field(max_length=64)], float] | None = Field(
        default=None, max_length=32
    )

    @model_validator(mode="after")
    def _fields_match_source(self) -> CarbonSetting:
        needed = {"constant": "g_per_kwh", "region": "country", "mix": "shares"}.get(self.source)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(f"source {self.source!r} needs {needed!r}")
        extra = [
            name
            for name in ("g_per_kwh", "country", "year", "shares")
            if getattr(self, name) is not None
            and name != needed
            and not (self.source == "region" and name == "year")
        ]
        if extra:
            raise ValueError(f"source {self.source!r} takes no {', '.join(extra)}")
        if self.shares is not None:
            total = sum(self.shares.values())
            if total > 0 and not (abs(total - 100) <= 0.5 or abs(total - 1) <= 0.005):
                raise ValueError(
                    f"mix shares add up to {total:g}: give percentages adding up to 100 or "
                    "fractions adding up to 1 (every source, e.g. hydro, included)"
                )
        return self


class PueSetting(BaseModel):
    """Body of ``PUT /api/v1/clusters/{cluster}/pue``: a constant, or null for the default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pue: float | None = Field(ge=1.0, le=MAX_PUE)


class SeriesPoint(BaseModel):
    """One point of an imported series (holds until the next point)."""

    model_config = ConfigDict(extra="forbid")

    time: UtcTime
    value: float


class SeriesIn(BaseModel):
    """JSON body of ``POST /api/v1/clusters/{cluster}/{factor}/series``."""

    model_config = ConfigDict(extra="forbid")

    points: list[SeriesPoint] = Field(min_length=1, max_length=1_000_000)


def resolve_carbon(setting: CarbonSetting) -> tuple[float | None, str, dict[str, Any]]:
    """Return ``(g_per_kwh, label, params)`` of a carbon setting.

    Raises:
        ValueError: Unknown region or year, unknown mix source, empty mix.
    """
    if setting.source == "constant":
        assert setting.g_per_kwh is not None
        return setting.g_per_kwh, f"constant {setting.g_per_kwh:g} g/kWh", {}
    if setting.source == "region":
        assert setting.country is not None
        row = carbon_data.region_intensity(setting.country, setting.year)
        label = f"region {row.code} {row.year} ({row.entity}): {row.source}"
        return row.g_per_kwh, label, {"country": row.code, "year": row.year}
    if setting.source == "mix":
        assert setting.shares is not None
        value = mix_intensity_g_per_kwh(setting.shares, carbon_data.source_factors_g_per_kwh())
        parts = ", ".join(f"{k} {v:g}" for k, v in setting.shares.items())
        return (
            value,
            f"mix ({parts}) with CodeCarbon 3.3.2 per-source factors",
            {"shares": dict(setting.shares)},
        )
    return None, "imported series" if setting.source == SERIES else "server default", {}


def _upsert_config(conn: Connection, cluster: str, values: dict[str, Any]) -> None:
    stmt = dialect_insert(conn)(ClusterConfig).values(
        cluster=cluster, updated_at=datetime.now(UTC), **values
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[ClusterConfig.cluster],
            set_={**values, "updated_at": stmt.excluded.updated_at},
        )
    )


def set_carbon(conn: Connection, cluster: str, setting: CarbonSetting) -> int:
    """Store a cluster's carbon source and recompute its history; return hours changed."""
    value, label, params = resolve_carbon(setting)
    lock_factors(conn, cluster)
    source = None if setting.source == "default" else setting.source
    _upsert_config(
        conn,
        cluster,
        {
            "carbon_source": source,
            "carbon_g_per_kwh": value,
            "carbon_label": None if source is None else label,
            "carbon_params": params or None,
        },
    )
    return recompute(conn, cluster)


def set_pue(conn: Connection, cluster: str, pue: float | None) -> int:
    """Store a cluster's constant PUE (None: the server default); return hours changed."""
    lock_factors(conn, cluster)
    _upsert_config(conn, cluster, {"pue": pue})
    return recompute(conn, cluster)


def import_series(
    conn: Connection, cluster: str, factor: Factor, steps: list[tuple[datetime, datetime, float]]
) -> int:
    """Store series steps, replacing stored ones they overlap; recompute that span.

    Raises:
        ValueError: A value is outside the factor's range (nothing is stored).
    """
    low, high = VALUE_LIMITS[factor]
    for start, _, value in steps:
        if not low <= value <= high:
            raise ValueError(
                f"{factor} value {value} at {start.isoformat()} is outside [{low:g}, {high:g}]"
            )
    first, last = steps[0][0], steps[-1][1]
    lock_factors(conn, cluster)
    fp = FactorPoint
    mine = (fp.cluster == cluster, fp.factor == factor)
    # Stored steps overlapping [first, last) keep what lies outside it: cut at both edges
    # (a step covering the whole import becomes two pieces).
    overlapping = conn.execute(
        select(fp.start_at, fp.end_at, fp.value).where(*mine, fp.start_at < last, fp.end_at > first)
    ).all()
    conn.execute(delete(fp).where(*mine, fp.start_at < last, fp.end_at > first))
    kept = [(s, min(e, first), v) for s, e, v in overlapping if s < first]
    kept += [(max(s, last), e, v) for s, e, v in overlapping if e > last]
    span_first = min([first, *(s for s, _, _ in overlapping)])
    span_last = max([last, *(e for _, e, _ in overlapping)])
    rows = [*kept, *steps]
    conn.execute(
        dialect_insert(conn)(FactorPoint),
        [
            {"cluster": cluster, "factor": factor, "start_at": s, "end_at": e, "value": v}
            for s, e, v in rows
        ],
    )
    if factor == "carbon":
        own, _ = load_configs(conn, cluster)
        if own is None:
            _upsert_config(
                conn, cluster, {"carbon_source": SERIES, "carbon_label": "imported series"}
            )
    return recompute(conn, cluster, span_first, span_last)


def clear_series(conn: Connection, cluster: str, factor: Factor) -> int:
    """Delete a cluster's series of ``factor`` and recompute the span it covered."""
    lock_factors(conn, cluster)
    fp = FactorPoint
    mine = (fp.cluster == cluster, fp.factor == factor)
    span = select(func.min(fp.start_at), func.max(fp.end_at)).where(*mine)
    first, last = conn.execute(span).one()
    if first is None:
        return 0
    conn.execute(delete(fp).where(*mine))
    return recompute(conn, cluster, first, last)


def seed_defaults(
    conn: Connection, pue: float, g_per_kwh: float | None,
    given: Collection[str] = ("pue", "carbon"),
) -> list[str]:
    """Store the server's default factors where that rewrites nothing; return what was not.

    The defaults (the row of cluster ``""``) hold for every cluster without factors of its
    own. A server start stores them when the database has none, and replaces them while it
    holds no energy yet (nothing was computed with them). Once energy is stored they stay:
    restarting a server with other settings, or none, must never silently rewrite the past.
    A cluster's factors change through ``jobenergy cluster`` (admin API, audited), which
    recomputes what they affect.

    Args:
        conn: Connection in the caller's transaction.
        pue: The server's PUE setting.
        g_per_kwh: The server's carbon intensity (None: the world average, flagged).
        given: Which of ``"pue"`` and ``"carbon"`` the operator set (option, environment or
            file); the others keep the stored values (built-in ones if none are stored).

    Returns:
        One ``"PUE 1.2 given, 1.5 stored"`` per given setting that differs from the stored
        default and was not applied (empty when everything matches or was stored).
    """
    lock_factors(conn, DEFAULTS)
    _, stored = load_configs(conn, DEFAULTS)
    current: dict[str, float | None] = {"pue": 1.0, "carbon": None}
    if stored is not None:
        current = {"pue": 1.0 if stored.pue is None else stored.pue,
                   "carbon": stored.carbon_g_per_kwh}
    wanted = {"pue": pue, "carbon": g_per_kwh}
    target = {name: wanted[name] if name in given else value for name, value in current.items()}
    if stored is not None and target == current:
        return []
    if conn.scalar(select(JobEnergyHour.cluster).limit(1)) is None:  # no energy stored yet
        _upsert_config(conn, DEFAULTS, {
            "pue": target["pue"],
            "carbon_g_per_kwh": target["carbon"],
            "carbon_source": None if target["carbon"] is None else "constant",
        })
        return []
    return [
        f"{_LABELS[name]} {_shown(name, target[name])} given, {_shown(name, current[name])} "
        "stored"
        for name in ("pue", "carbon") if target[name] != current[name]
    ]


_LABELS = {"pue": "PUE", "carbon": "carbon intensity"}


def _shown(name: str, value: float | None) -> str:
    if value is None:
        return "world average"
    return f"{value:g} g/kWh" if name == "carbon" else f"{value:g}"


def apply_server_defaults(conn: Connection, settings: ServerSettings) -> None:
    """Seed the default factors from the server's settings (:func:`seed_defaults`) and warn,
    once, about settings that differ from the stored defaults and were not applied."""
    given = {name for name, field in (("pue", "pue"),
                                      ("carbon", "carbon_intensity_g_per_kwh"))
             if field in settings.model_fields_set}
    ignored = seed_defaults(conn, settings.pue, settings.carbon_intensity_g_per_kwh, given)
    if ignored:
        logger.warning(
            "server settings not applied: %s: the database holds energy computed with the "
            "stored defaults, and a server start never rewrites them; change a cluster's "
            "factors with `jobenergy cluster set-pue|set-carbon` (audited)", "; ".join(ignored))


def describe(conn: Connection, cluster: str) -> dict[str, Any]:
    """Return a cluster's configuration, resolved base factors, series extents and factor
    revision (``collector/factor_changes.py``)."""
    own, defaults = load_configs(conn, cluster)
    pue, pue_source, g_per_kwh, carbon_source = base_factors(own, defaults)
    fp = FactorPoint
    series = {
        factor: {"points": int(n), "start": start, "end": end}
        for factor, n, start, end in conn.execute(
            select(fp.factor, func.count(), func.min(fp.start_at), func.max(fp.end_at))
            .where(fp.cluster == cluster)
            .group_by(fp.factor)
        )
    }
    return {
        "cluster": cluster,
        "factors_revision": factor_changes.revision(conn, cluster),
        "pue": {"value": pue, "source": pue_source, "series": series.get("pue")},
        "carbon": {
            "source": (own.carbon_source if own is not None and own.carbon_source else None)
            or carbon_source,
            "g_per_kwh": g_per_kwh,
            "base_source": carbon_source,
            "fallback": carbon_source == "fallback",
            "label": own.carbon_label if own is not None and own.carbon_label else carbon_source,
            "params": dict(own.carbon_params) if own is not None and own.carbon_params else {},
            "series": series.get("carbon"),
        },
    }
