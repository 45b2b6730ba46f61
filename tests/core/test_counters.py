from jobenergy.core.counters import counter_delta
from jobenergy.core.units import UJ_PER_KWH, mj_to_uj, power_to_energy_uj, uj_to_kwh

MAX = 262_143_328_850  # prometheus/procfs fixture max_energy_range_uj


def test_plain_increase():
    d = counter_delta(100, 350, MAX)
    assert (d.energy_uj, d.wrapped, d.reset) == (250, False, False)


def test_wrap_at_max_energy_range():
    prev = MAX - 1_000
    cur = 4_000
    d = counter_delta(prev, cur, MAX)
    assert d.wrapped and not d.reset
    assert d.energy_uj == 1_000 + 4_000


def test_drop_without_range_is_reset():
    d = counter_delta(5_000_000, 1_200, None)
    assert d.reset and not d.wrapped
    assert d.energy_uj == 1_200


def test_reading_above_range_then_drop_is_reset():
    d = counter_delta(MAX + 10, 5, MAX)
    assert d.reset


def test_units_are_exact():
    assert UJ_PER_KWH == 3600 * 1000 * 10**6
    assert uj_to_kwh(UJ_PER_KWH) == 1.0
    assert mj_to_uj(7) == 7000
    # 300 W for 2 s = 600 J = 6e8 µJ
    assert power_to_energy_uj(300_000, 2_000_000_000) == 600 * 10**6
