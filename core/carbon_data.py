"""The carbon datasets shipped inside the package (``core/data/``, see its SOURCE.md).

- Region intensities: Our World in Data, carbon intensity of electricity, g CO2e/kWh per
  country (ISO 3166-1 alpha-3 code, or OWID's ``OWID_*`` aggregates) and year; CC BY 4.0.
- Per-source factors for a generation mix: CodeCarbon 3.3.2's ``carbon_intensity_per_source``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

OWID_FILE = "owid-carbon-intensity-electricity.csv"
CODECARBON_FILE = "codecarbon-carbon-intensity-per-source.json"
OWID_ATTRIBUTION = "Our World in Data (Ember, Energy Institute), CC BY 4.0"


@dataclass(frozen=True)
class RegionIntensity:
    """One country-year of the shipped dataset."""

    code: str
    entity: str
    year: int
    g_per_kwh: float
    source: str = OWID_ATTRIBUTION


def _read(name: str) -> str:
    return resources.files("jobenergy.core").joinpath("data", name).read_text(encoding="utf-8")


@cache
def _regions() -> dict[str, dict[int, RegionIntensity]]:
    table: dict[str, dict[int, RegionIntensity]] = {}
    reader = csv.reader(io.StringIO(_read(OWID_FILE)))
    next(reader)  # header
    for entity, code, year, value in reader:
        if not code or not value:
            continue
        row = RegionIntensity(code=code, entity=entity, year=int(year), g_per_kwh=float(value))
        table.setdefault(code.upper(), {})[row.year] = row
        table.setdefault(entity.upper(), {})[row.year] = row
    return table


def region_intensity(code: str, year: int | None = None) -> RegionIntensity:
    """Return the intensity of a country (ISO alpha-3 code or OWID name) in ``year``.

    Args:
        code: ``FRA``, ``DEU``, ``OWID_WRL`` (world) or an entity name such as ``France``.
        year: The year; None means the latest year the dataset has for that country.

    Raises:
        ValueError: Unknown country, or no value for that year (the message gives the years).
    """
    years = _regions().get(code.strip().upper())
    if not years:
        raise ValueError(
            f"unknown region {code!r}: use an ISO 3166-1 alpha-3 code such as FRA or DEU "
            "(Our World in Data codes)"
        )
    if year is None:
        return years[max(years)]
    if year not in years:
        raise ValueError(
            f"no carbon intensity for {code!r} in {year}: the dataset has {min(years)}-{max(years)}"
        )
    return years[year]


@cache
def source_factors_g_per_kwh() -> dict[str, float]:
    """Return CodeCarbon's g CO2e/kWh per generation source (``coal``, ``nuclear``, ...)."""
    data = json.loads(_read(CODECARBON_FILE))
    return {
        key: float(value)
        for key, value in data.items()
        if isinstance(value, int | float) and key != "world_average"
    }
