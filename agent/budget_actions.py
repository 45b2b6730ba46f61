"""The budget actions a collector answers a batch with, parsed strictly.

``POST /api/v1/batches`` answers ``{"duplicate": ..., "records": ..., "budget_actions": [...]}``
(``collector/budget_running.py``); each action names one of the batch's running jobs that a
budget's ``running_policy`` applies to::

    {"job_id": "4242", "action": "warn" | "exceeded" | "cancel", "budget_id": 7,
     "used_inner": 9.5e12, "limit_inner": 1e13, "unit": "kwh" | "kg_co2e"}

The collector is trusted, but what reaches ``scancel`` is checked here as if it were not: the
job id is Slurm's digits, the action one of three words, numbers are integers in a signed
64-bit range (``true`` is no integer), and at most :data:`MAX_ACTIONS` are read. An entry that
fails is dropped and reported; the others stand. An answer without the field (a collector
that predates it) or that is not a JSON object (a proxy's page) carries no action.
Whether the job runs on this node is checked where the actions are taken
(``agent/energy_limits.py``). Plain standard library: the agent imports no pydantic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jobenergy.agent.jobmap import SLURM_JOB_ID_RE

ACTIONS = ("warn", "exceeded", "cancel")
UNITS = ("kwh", "kg_co2e")
#: Most actions read from one answer (a node runs far fewer jobs).
MAX_ACTIONS = 4096
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class BudgetAction:
    """One checked action: what to do to ``job_id`` because of budget ``budget_id``."""

    job_id: str
    action: str
    budget_id: int
    used_inner: int
    limit_inner: int
    unit: str


def _int(value: Any, low: int) -> int | None:
    if type(value) is not int or not low <= value <= _INT64_MAX:
        return None
    return value


def _entry(item: Any) -> BudgetAction | str:
    """Return the action of one entry, or why it is refused."""
    if not isinstance(item, dict):
        return "not an object"
    job_id, action, unit = item.get("job_id"), item.get("action"), item.get("unit")
    if not isinstance(job_id, str) or not SLURM_JOB_ID_RE.fullmatch(job_id):
        return f"job_id {str(job_id)[:40]!r} is not a Slurm job id"
    if action not in ACTIONS:
        return f"job {job_id}: action {str(action)[:20]!r} is not one of {', '.join(ACTIONS)}"
    if unit not in UNITS:
        return f"job {job_id}: unit {str(unit)[:20]!r} is not one of {', '.join(UNITS)}"
    budget_id = _int(item.get("budget_id"), 1)
    used, limit = _int(item.get("used_inner"), 0), _int(item.get("limit_inner"), 1)
    if budget_id is None or used is None or limit is None:
        return f"job {job_id}: budget_id, used_inner and limit_inner must be integers in range"
    return BudgetAction(job_id, action, budget_id, used, limit, unit)


def parse_budget_actions(body: bytes) -> tuple[list[BudgetAction], list[str]]:
    """Return the checked actions of a batch answer and the problems of those refused."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], []
    if not isinstance(answer, dict) or answer.get("budget_actions") is None:
        return [], []
    items = answer["budget_actions"]
    if not isinstance(items, list):
        return [], ["budget_actions is not a list"]
    problems = []
    if len(items) > MAX_ACTIONS:
        problems.append(f"{len(items)} budget actions, only the first {MAX_ACTIONS} read")
        items = items[:MAX_ACTIONS]
    actions = []
    for item in items:
        checked = _entry(item)
        if isinstance(checked, str):
            problems.append(checked)
        else:
            actions.append(checked)
    return actions, problems
