"""Carbon arithmetic and the shipped datasets, checked against published numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobenergy.core import carbon, carbon_data
from jobenergy.core.series import parse_series_csv, step_intervals
from jobenergy.core.units import UJ_PER_KWH

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_france_is_55_g_per_kwh():
    row = carbon_data.region_intensity("FRA", 2023)
    assert round(row.g_per_kwh) == 55 and row.entity == "France"
    assert carbon_data.region_intensity("france", 2023) == row
    assert carbon_data.region_intensity("FRA").year == 2024  # latest by default
    assert "CC BY 4.0" in row.source


def test_unknown_region_and_year_are_clear():
    with pytest.raises(ValueError, match="alpha-3"):
        carbon_data.region_intensity("XXX")
    with pytest.raises(ValueError, match="2000-2024"):
        carbon_data.region_intensity("FRA", 1850)


def test_codecarbon_mix_is_731_59():
    factors = carbon_data.source_factors_g_per_kwh()
    shares = {"coal": 25, "petroleum": 35, "natural_gas": 26, "nuclear": 14}
    assert carbon.mix_intensity_g_per_kwh(shares, factors) == pytest.approx(731.59, abs=1e-9)
    fractions = {"coal": 0.25, "oil": 0.35, "gas": 0.26, "nuclear": 0.14}
    assert carbon.mix_intensity_g_per_kwh(fractions, factors) == pytest.approx(731.59)
    with pytest.raises(ValueError, match="unknown energy source 'unobtainium'"):
        carbon.mix_intensity_g_per_kwh({"unobtainium": 1}, factors)
    with pytest.raises(ValueError, match="above 0"):
        carbon.mix_intensity_g_per_kwh({"coal": 0}, factors)


def test_inference_run_at_55_g():
    energy_uj = 7_056_000_000  # 1.96e-3 kWh
    assert energy_uj / UJ_PER_KWH == pytest.approx(1.96e-3)
    assert carbon.co2e_ug(energy_uj, 55.0) == 107_800  # µg
    assert carbon.co2e_ug(energy_uj, 55.0) / 1e9 == pytest.approx(1.078e-4, rel=1e-12)
    assert carbon.co2e_kg(1.96e-3, 55.0) == pytest.approx(1.078e-4)


def test_facility_uj_is_exact_and_checked():
    assert carbon.facility_uj(UJ_PER_KWH, 1.5) == UJ_PER_KWH * 3 // 2
    assert carbon.facility_uj(3, 1.5) in (4, 5)
    with pytest.raises(ValueError, match="PUE"):
        carbon.facility_uj(1, 0.9)


def test_split_over_hours_conserves():
    start = T0 + timedelta(minutes=50)
    parts = carbon.split_over_hours(start, start + timedelta(minutes=20), 1_000_001)
    assert list(parts) == [T0, T0 + timedelta(hours=1)]
    assert sorted(parts.values()) == [500_000, 500_001]
    assert carbon.split_over_hours(T0, T0 + timedelta(hours=1), 7) == {T0: 7}


def test_electricity_maps_csv():
    text = (
        "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
        "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage\n"
        "2026-11-23 10:00:00,France,France,FR,20.5,40.1,95\n"
        "2026-11-23 11:00:00,France,France,FR,30.5,60.2,93\n"
    )
    points = parse_series_csv(text)
    assert points == [(T0, 40.1), (T0 + timedelta(hours=1), 60.2)]
    direct = parse_series_csv(text, column="Carbon Intensity gCO₂eq/kWh (direct)")
    assert [v for _, v in direct] == [20.5, 30.5]
    steps = step_intervals(points)
    assert steps[-1] == (T0 + timedelta(hours=1), T0 + timedelta(hours=2), 60.2)
    with pytest.raises(ValueError, match="line 2"):
        parse_series_csv("time,value\nyesterday,3\n")
    with pytest.raises(ValueError, match="two points"):
        step_intervals([(T0, 1.0), (T0, 2.0)])
