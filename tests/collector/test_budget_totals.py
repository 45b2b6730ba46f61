"""A budget's usage read from one window's totals (by user, account, pair) is exactly what
summing every (user, account) pair that ``matches`` the budget gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobenergy.collector.budget_usage import _WindowTotals, matches

_USERS = st.sampled_from(["alice", "bob", "Alice", None])
_ACCOUNTS = st.sampled_from(["physics", "PHYSICS", "chem", None])
_USAGE = st.dictionaries(st.tuples(_USERS, _ACCOUNTS),
                         st.tuples(st.integers(0, 10**15), st.integers(0, 10**12)), max_size=12)
_BUDGETS = st.fixed_dictionaries({
    "scope": st.sampled_from(["user", "account", "account_user"]),
    "user": st.sampled_from(["alice", "bob", "Alice", ""]),
    "account": st.sampled_from(["physics", "Physics", "chem", ""]),
})


@given(_USAGE, _BUDGETS, st.integers(0, 1))
def test_totals_agree_with_matches(usage, budget, column):
    expected = sum(values[column] for (user, account), values in usage.items()
                   if matches(budget, user, account))
    assert _WindowTotals(usage).used(budget, column) == expected
