"""The energy-limit reason in our AdminComment segment (``limit=cancelled``)."""

from __future__ import annotations

from jobenergy.cli.admin_comment import (
    admin_comment_text,
    format_summary,
    has_summary,
    strip_summary,
)
from jobenergy.collector.events import comment_tags

JOB = {"energy_kwh": 0.5, "by_component": {"gpu": 0}, "facility_energy_kwh": 0.6,
       "co2e_kg": 0.1, "quality": {"sources": ["package-0"]}}


def test_the_strongest_action_is_written_after_the_figures():
    tags = {"energy_limit_uj": "9000000000000", "energy_limit_warned_uj": "8100000000000",
            "energy_limit_cancelled_uj": "9000000000001"}
    summary = format_summary({**JOB, "tags": tags})
    assert summary == "energy_kwh=0.5 gpu_kwh=0 facility_kwh=0.6 co2e_kg=0.1 limit=cancelled"
    warned = format_summary({**JOB, "tags": {"energy_limit_warned_uj": "1"}})
    assert warned.endswith(" co2e_kg=0.1 limit=warned")
    assert format_summary({**JOB, "tags": {"energy_limit_uj": "1"}}).endswith("co2e_kg=0.1")


def test_a_segment_with_the_reason_is_replaced_whole_and_other_content_kept():
    old = "note by admin energy_kwh=0.4 gpu_kwh=0 facility_kwh=0.5 co2e_kg=0.1 limit=warned"
    assert has_summary(old)
    assert strip_summary(old) == "note by admin"
    new = format_summary({**JOB, "tags": {"energy_limit_cancelled_uj": "5"}})
    text, written = admin_comment_text(old, new)
    assert written and text == f"note by admin {new}"
    assert admin_comment_text(text, new) == (text, True)  # idempotent: nothing appended


def test_users_cannot_write_the_reason_through_their_job_comment():
    assert comment_tags("model=x energy_limit_cancelled_uj=1 Energy_Limit_uj=5") == {"model": "x"}


def test_a_budgets_action_names_the_budget_and_is_replaced_whole():
    tags = {"energy_limit_cancelled_uj": "5", "energy_limit_budget_id": "12"}
    summary = format_summary({**JOB, "tags": tags})
    assert summary.endswith(" co2e_kg=0.1 limit=cancelled budget_id=12")
    assert strip_summary(f"note {summary}") == "note"
    assert admin_comment_text(f"note {summary}", summary) == (f"note {summary}", True)
    # Only digits are written (the segment must stay recognisable); no action: no budget.
    odd = format_summary({**JOB, "tags": {**tags, "energy_limit_budget_id": "1 x"}})
    assert odd.endswith("limit=cancelled")
    assert format_summary({**JOB, "tags": {"energy_limit_budget_id": "12"}}).endswith("=0.1")
    assert comment_tags("energy_limit_budget_id=3 model=m") == {"model": "m"}
