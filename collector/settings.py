"""Collector/API server settings (DESIGN.md decision 11).

One pydantic-settings class, environment prefix ``JOBENERGY_SERVER_``. Nothing here is
instantiated at import time: the CLI builds a :class:`ServerSettings` and passes it to
``jobenergy.api.app.create_app``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobenergy.core.carbon import WORLD_AVERAGE_G_PER_KWH

#: Default cap on one request body, compressed and decompressed: 32 MiB.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Default caps on one series import (``POST /api/v1/clusters/{c}/{factor}/series``): 16 MiB
#: and 200 000 points (22 years of hourly values).
DEFAULT_MAX_SERIES_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_SERIES_POINTS = 200_000


class ServerSettings(BaseSettings):
    """Settings of the central collector + read API.

    Attributes:
        db_url: SQLAlchemy URL. ``sqlite:///path`` (embedded default) or
            ``postgresql+psycopg://user@host/db`` (production; ``postgresql://`` is accepted
            and mapped to psycopg 3).
        host: Address the HTTP server binds to.
        port: TCP port of the HTTP server.
        pue: Power usage effectiveness of the cluster's facility (>= 1).
        carbon_intensity_g_per_kwh: Grid carbon intensity, g CO2e/kWh. ``None`` means unknown:
            the world average is used and reported as a fallback.
        migrate: Run the Alembic migrations to head when the app starts.
        max_body_bytes: Largest accepted request body, checked on the compressed bytes and
            again while decompressing.
        max_series_bytes: Largest series import body (JSON or CSV), checked the same way.
        max_series_points: Most points one series import may hold; a CSV is parsed row by
            row and refused (413) at the first point beyond.
    """

    model_config = SettingsConfigDict(env_prefix="JOBENERGY_SERVER_", extra="forbid")

    db_url: str = "sqlite:///./jobenergy.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    pue: float = Field(default=1.0, ge=1.0)
    carbon_intensity_g_per_kwh: float | None = Field(default=None, ge=0.0)
    migrate: bool = True
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_series_bytes: int = Field(default=DEFAULT_MAX_SERIES_BYTES, ge=1024)
    max_series_points: int = Field(default=DEFAULT_MAX_SERIES_POINTS, ge=1, le=1_000_000)

    @property
    def effective_carbon_intensity_g_per_kwh(self) -> float:
        """Return the configured intensity, or the world average when none is configured."""
        if self.carbon_intensity_g_per_kwh is None:
            return WORLD_AVERAGE_G_PER_KWH
        return self.carbon_intensity_g_per_kwh

    @property
    def carbon_intensity_fallback(self) -> bool:
        """Return True when the world-average fallback is in use."""
        return self.carbon_intensity_g_per_kwh is None
