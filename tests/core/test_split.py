from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobenergy.core.split import split_uj


@given(
    total=st.integers(min_value=0, max_value=10**15),
    weights=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 10**9), min_size=1),
)
def test_split_conserves_and_is_within_one_uj_of_exact_share(total, weights):
    if sum(weights.values()) == 0 and total:
        with pytest.raises(ValueError):
            split_uj(total, weights)
        return
    parts = split_uj(total, weights)
    assert sum(parts.values()) == total
    weight_sum = sum(weights.values()) or 1
    for key, w in weights.items():
        exact = Fraction(total * w, weight_sum)
        assert abs(parts[key] - exact) < 1
        if w == 0:
            assert parts[key] == 0


def test_largest_remainder_gives_leftover_to_largest_fractions():
    # 100 over weights 1:1:1 -> 33.33 each: one key gets the spare µJ, first in order on ties.
    assert split_uj(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    # 10 over 0.25/0.75 -> 2.5 / 7.5: tie on remainder .5, order decides.
    assert split_uj(10, {"x": 1, "y": 3}) == {"x": 3, "y": 7}


def test_negative_inputs_rejected():
    with pytest.raises(ValueError, match="total_uj"):
        split_uj(-1, {"a": 1})
    with pytest.raises(ValueError, match="weight"):
        split_uj(1, {"a": -1})
