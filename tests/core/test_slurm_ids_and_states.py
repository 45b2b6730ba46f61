"""sacct's job ids (arrays, het jobs, steps) and state codes, as ``-j`` and ``-s`` read them."""

from __future__ import annotations

import pytest

from jobenergy.core.slurm_jobids import (
    MAX_SELECTED,
    BadJobId,
    JobSelector,
    parse_job_selectors,
    sacct_job_id,
    sacct_step_order,
)
from jobenergy.core.slurm_states import UnknownState, parse_states


def test_job_selectors_in_sacct_forms() -> None:
    assert parse_job_selectors(["1234, 1234_5,1240+1", "1250.batch,1234_5", "77_[1-3,7].0"]) == (
        JobSelector("1234"), JobSelector("1234", task=5), JobSelector("1240", offset=1),
        JobSelector("1250", step="batch"), *(JobSelector("77", task=t, step="0")
                                             for t in (1, 2, 3, 7)))
    assert parse_job_selectors(["9.EXTERN", "9.0+1", "009"]) == (
        JobSelector("9", step="extern"), JobSelector("9", step="0+1"), JobSelector("9"))
    # Not Slurm's numbers (a demo scheduler's ids): taken as they are, no step.
    assert parse_job_selectors(["demo-1"]) == (JobSelector("demo-1"),)
    assert JobSelector("5", task=2).api_id == "5_2" and JobSelector("5", offset=0).api_id == "5+0"


@pytest.mark.parametrize(
    "text", ["12 34", "5_[3-1]", "5_[a]", "5_[1-", "x[1]", "é", "40_x", "1.foo"])
def test_bad_job_ids_are_refused_naming_them(text: str) -> None:
    with pytest.raises(BadJobId):
        parse_job_selectors([text])


def test_selector_lists_are_bounded() -> None:
    with pytest.raises(BadJobId, match="invalid array task range"):
        parse_job_selectors([f"5_[0-{MAX_SELECTED}]"])
    with pytest.raises(BadJobId, match=f"more than {MAX_SELECTED}"):
        parse_job_selectors([",".join(str(i) for i in range(MAX_SELECTED + 1))])


def test_sacct_job_ids_and_step_order() -> None:
    assert sacct_job_id("41", "40", 0) == "40_0"
    assert sacct_job_id("51", het_job_id="50", het_job_offset=1) == "50+1"
    assert sacct_job_id("60") == "60" and sacct_job_id("61", "40", None) == "61"
    steps = ["10", "0+1", "extern", "pending", "0", "batch", "0+0", "interactive", "2"]
    assert sorted(steps, key=sacct_step_order) == [
        "interactive", "batch", "extern", "0", "0+0", "0+1", "2", "10", "pending"]


def test_states_by_name_or_code_any_case() -> None:
    assert parse_states(["cd,F", "timeout", "OOM,completed"]) == (
        "COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY")
    assert parse_states(["pd,r,ca,nf,pr,bf,dl,rq,rs,rv,s,cg"]) == (
        "PENDING", "RUNNING", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
        "REQUEUED", "RESIZING", "REVOKED", "SUSPENDED", "COMPLETING")
    with pytest.raises(UnknownState, match=r"invalid state 'done'; valid states: BF BOOT_FAIL, "
                                           r"CA CANCELLED, CD COMPLETED"):
        parse_states(["CD,done"])
