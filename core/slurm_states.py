"""Slurm's job state names and their short codes, as ``sacct -s/--state`` reads them.

sacct(1) "JOB STATE CODES" lists the base states and the flags a state list may name, in a
short (``CD``) and a long (``COMPLETED``) form, case-insensitive. Slurm's own parser
(``job_state_num``) also takes a few more (``CG``, ``CF``, ``SE``, ``ST``, ...); they are
accepted here too. ``ENDED`` is jobenergy's own: an end event that named no state and no exit
code (``collector/events.py``).
"""

from __future__ import annotations

#: Long name → short code, in sacct(1)'s order, then the rest Slurm's parser accepts.
STATE_CODES: dict[str, str] = {
    "BOOT_FAIL": "BF",
    "CANCELLED": "CA",
    "COMPLETED": "CD",
    "DEADLINE": "DL",
    "FAILED": "F",
    "NODE_FAIL": "NF",
    "OUT_OF_MEMORY": "OOM",
    "PENDING": "PD",
    "PREEMPTED": "PR",
    "RUNNING": "R",
    "REQUEUED": "RQ",
    "RESIZING": "RS",
    "REVOKED": "RV",
    "SUSPENDED": "S",
    "TIMEOUT": "TO",
    "COMPLETING": "CG",
    "CONFIGURING": "CF",
    "REQUEUE_FED": "RF",
    "REQUEUE_HOLD": "RH",
    "RESV_DEL_HOLD": "RD",
    "SIGNALING": "SI",
    "SPECIAL_EXIT": "SE",
    "STAGE_OUT": "SO",
    "STOPPED": "ST",
}
_BY_CODE = {code: name for name, code in STATE_CODES.items()}
#: jobenergy's own state: an end event without state or exit code.
ENDED = "ENDED"


class UnknownState(ValueError):
    """A state that is neither a Slurm state name nor its code (the message lists them)."""


def valid_states() -> str:
    """Return the accepted states as one line: ``CD COMPLETED, F FAILED, ...``."""
    return ", ".join(f"{code} {name}" for name, code in STATE_CODES.items())


def parse_states(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Return the long, upper-case names of comma-separated state names or codes, in order,
    without repeats (``["cd,F", "timeout"]`` → ``("COMPLETED", "FAILED", "TIMEOUT")``).

    Raises:
        UnknownState: One is neither a name nor a code (the message lists the valid ones).
    """
    out: dict[str, None] = {}
    for value in values:
        for part in value.split(","):
            word = part.strip().upper()
            if not word:
                continue
            if word in STATE_CODES or word == ENDED:
                out[word] = None
            elif word in _BY_CODE:
                out[_BY_CODE[word]] = None
            else:
                raise UnknownState(f"invalid state {part.strip()[:64]!r}; valid states: "
                                   f"{valid_states()}")
    return tuple(out)
