"""Slurm's job ids as sacct prints and reads them: arrays, heterogeneous jobs, steps.

Slurm gives every array task and every het-job component a job record of its own, with a raw
id (``JobIDRaw``, what ``$SLURM_JOB_ID`` and the agents see, what jobenergy files the job
under). sacct(1) prints a job as ``ArrayJobID_ArrayTaskID`` (``1234_5``),
``HetJobID+HetJobOffset`` (``1234+1``) or its raw id, and a step as ``JobID.Step``
(``1234_5.batch``, ``1234+1.0``).

``sacct -j`` takes a comma-separated list of ``job[.step]``:

- ``N``: the job whose raw id is N, every task of array N, every component of het job N;
- ``N_T`` (or ``N_[1-3,7]``): those tasks of array N; ``N+K``: component K of het job N;
- ``.step`` (``batch``, ``extern``, ``interactive``, ``0``, ``0+1``): only that step's row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Most ids one selector list may expand to (``N_[1-100000]`` is refused, not read).
MAX_SELECTED = 10_000

_SELECTOR = re.compile(
    r"(?P<job>\d{1,10})"
    r"(?:_(?P<task>\d{1,10}|\[[0-9,\-]{1,4096}\])|\+(?P<offset>\d{1,10}))?"
    r"(?:\.(?P<step>batch|extern|interactive|\d{1,10}(?:\+\d{1,10})?))?",
    re.I,
)
#: Other job ids (not starting with a digit, unlike Slurm's; e.g. a demo scheduler's): taken
#: as they are.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.+:\-]{1,64}")
_NAMED_STEPS = {"interactive": 0, "batch": 1, "extern": 2}


class BadJobId(ValueError):
    """A ``-j`` item that is no job id (the message names it and the forms)."""


@dataclass(frozen=True)
class JobSelector:
    """One ``-j`` item: which jobs, and which of their steps (None: the job and all steps).

    Exactly one of: ``task`` (array task of array ``job``), ``offset`` (component of het job
    ``job``), neither (raw id ``job``, or array / het job ``job`` as a whole).
    """

    job: str
    task: int | None = None
    offset: int | None = None
    step: str | None = None

    @property
    def api_id(self) -> str:
        """Return the id as the API's ``job_id`` filter takes it (no step)."""
        if self.task is not None:
            return f"{self.job}_{self.task}"
        if self.offset is not None:
            return f"{self.job}+{self.offset}"
        return self.job


def _tasks(text: str) -> list[int]:
    """Expand ``5`` or ``[1-3,7]`` into task ids."""
    if not text.startswith("["):
        return [int(text)]
    tasks: list[int] = []
    for part in text[1:-1].split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise BadJobId(f"invalid array task range {text!r}")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first or len(tasks) + last - first + 1 > MAX_SELECTED:
            raise BadJobId(f"invalid array task range {text!r}")
        tasks.extend(range(first, last + 1))
    return tasks


def split_list(text: str) -> list[str]:
    """Split a comma list at the commas outside brackets (``5_[1,3],6`` → two items,
    ``n[1-2],m3`` → two), dropping empty items."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_job_selectors(values: list[str] | tuple[str, ...]) -> tuple[JobSelector, ...]:
    """Parse comma-separated ``-j`` items (``1234,1234_5,1240+1,1250.batch``), in order,
    without repeats.

    Raises:
        BadJobId: An item is neither one of Slurm's forms nor a plain job id, or the list
            expands to more than :data:`MAX_SELECTED` ids.
    """
    out: dict[JobSelector, None] = {}
    for value in values:
        for text in split_list(value):
            m = _SELECTOR.fullmatch(text)
            if m is None:
                if text[0].isdigit() or not _PLAIN_ID.fullmatch(text):
                    raise BadJobId(
                        f"invalid job id {text[:64]!r}: use JOBID[.STEP], ARRAYID_TASK[.STEP] "
                        "or HETID+OFFSET[.STEP], comma separated")
                out[JobSelector(text)] = None
            else:
                step = m["step"].lower() if m["step"] else None
                job = str(int(m["job"]))
                if m["task"] is not None:
                    for task in _tasks(m["task"]):
                        out[JobSelector(job, task=task, step=step)] = None
                else:
                    offset = None if m["offset"] is None else int(m["offset"])
                    out[JobSelector(job, offset=offset, step=step)] = None
            if len(out) > MAX_SELECTED:
                raise BadJobId(f"more than {MAX_SELECTED} job ids")
    return tuple(out)


def sacct_job_id(job_id: str, array_job_id: str | None = None, array_task_id: int | None = None,
                 het_job_id: str | None = None, het_job_offset: int | None = None) -> str:
    """Return a job's id as sacct prints it: ``1234_5``, ``1234+1`` or the raw id."""
    if array_job_id is not None and array_task_id is not None:
        return f"{array_job_id}_{array_task_id}"
    if het_job_id is not None and het_job_offset is not None:
        return f"{het_job_id}+{het_job_offset}"
    return job_id


def sacct_step_order(step: str) -> tuple[int, int, int, str]:
    """Sort key of step ids in sacct's order (its step ids as signed integers: interactive,
    batch, extern, then numbered steps and their het components ascending), others last."""
    if step in _NAMED_STEPS:
        return (0, _NAMED_STEPS[step], 0, "")
    number, plus, comp = step.partition("+")
    if number.isdigit() and (not plus or comp.isdigit()):
        return (1, int(number), int(comp) if plus else -1, "")
    return (2, 0, 0, step)
