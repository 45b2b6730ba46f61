"""Our energy summary in a Slurm AdminComment, next to other tools' content.

AdminComment is one free-text field that several tools share: Princeton's jobstats keeps
``JS1:<base64 of gzipped JSON>`` there, sites keep notes. So only what we wrote is touched:

* Our summary is one segment: ``energy_kwh=V gpu_kwh=V facility_kwh=V co2e_kg=V`` (V plain
  decimals, never an exponent) or, for a job no energy source measured,
  ``energy=unmeasured``, followed by ``limit=cancelled`` (or ``exceeded``, ``warned``) for
  a job the node agent acted on at its ``--energy-limit`` (the job's ``energy_limit_*``
  tags), then ``budget_id=7`` when a budget's running policy took that action instead
  (``energy_limit_budget_id``). It is appended after the other content with one space, or
  stands alone when there is none.
* Replacing it removes exactly that segment and the one space written before it, wherever
  it is (another tool may have appended after it): every other byte, whitespace and
  newlines included, stays as it was.
* jobstats reads its value as ``gzip.decompress(base64.b64decode(text[4:]))``. That decoder
  skips characters outside the base64 alphabet but decodes letters and digits until ``=``
  padding ends a group, so after a value that ends *without* padding (a third of them) our
  segment would be read as more gzip data (``BadGzipFile``). Where appending would change
  what jobstats reads, the summary is withheld for that job (``senergy`` still has it), and
  a segment of ours written there earlier is removed, which repairs the value.
"""

from __future__ import annotations

import base64
import gzip
import math
import re
import zlib
from typing import Any

from jobenergy.core.units import UJ_PER_KWH

SUMMARY_KEYS = ("energy_kwh", "gpu_kwh", "facility_kwh", "co2e_kg")
UNMEASURED = "energy=unmeasured"
JOBSTATS_PREFIX = "JS1:"
#: What the agent did at the job's energy limit, strongest first: (tag, AdminComment value).
LIMIT_ACTIONS = (("energy_limit_cancelled_uj", "cancelled"),
                 ("energy_limit_exceeded_uj", "exceeded"),
                 ("energy_limit_warned_uj", "warned"))

_VALUE = r"[0-9.]+"
#: One segment of ours: after the start or the space we put, before whitespace or the end.
_SEGMENT = re.compile(
    r"(?<![^ ])(?:"
    + " ".join(f"{key}={_VALUE}" for key in SUMMARY_KEYS)
    + "|" + re.escape(UNMEASURED)
    + r")(?: limit=(?:" + "|".join(value for _tag, value in LIMIT_ACTIONS)
    + r")(?: budget_id=[0-9]{1,19})?)?(?!\S)"
)


def is_unmeasured(job: dict[str, Any]) -> bool:
    """True when no energy source covered a ``GET /api/v1/jobs/{id}`` job.

    ``quality.unmeasured`` says so where the API knows it; a job with no source at all and
    0 µJ is the same case told by an API that predates the flag. Its 0 is "nobody measured",
    not "used no energy", and must not be written as a confident ``energy_kwh=0``.
    """
    quality = job.get("quality") or {}
    if quality.get("unmeasured"):
        return True
    return quality.get("sources") == [] and int(job.get("energy_uj") or 0) == 0


def limit_action(job: dict[str, Any]) -> str | None:
    """Return what the agent did at the job's energy limit (``cancelled`` ...), or None."""
    tags = job.get("tags") or {}
    return next((value for tag, value in LIMIT_ACTIONS if tag in tags), None)


def format_summary(job: dict[str, Any]) -> str:
    """Return our AdminComment segment for a ``GET /api/v1/jobs/{id}`` answer."""
    action = limit_action(job)
    suffix = f" limit={action}" if action else ""
    budget_id = str((job.get("tags") or {}).get("energy_limit_budget_id") or "")
    if action and budget_id.isascii() and budget_id.isdigit() and len(budget_id) <= 19:
        suffix += f" budget_id={budget_id}"  # only digits: the segment stays recognisable
    if is_unmeasured(job):
        return UNMEASURED + suffix
    gpu_uj = int((job.get("by_component") or {}).get("gpu") or 0)
    values = (
        float(job.get("energy_kwh") or 0.0),
        gpu_uj / UJ_PER_KWH,
        float(job.get("facility_energy_kwh") or 0.0),
        float(job.get("co2e_kg") or 0.0),
    )
    return " ".join(f"{k}={_kwh_text(v)}"
                    for k, v in zip(SUMMARY_KEYS, values, strict=True)) + suffix


def _kwh_text(value: float) -> str:
    """Return ``0.412`` / ``0.000001234`` / ``0``: 9 decimals (3.6 mJ), no exponent.

    Never negative nor NaN (an API answer cannot make our segment unrecognisable: it would
    then be appended again at every pass).
    """
    value = value if math.isfinite(value) and value > 0 else 0.0
    return f"{value:.9f}".rstrip("0").rstrip(".") or "0"


def has_summary(admin_comment: str | None) -> bool:
    """True when an AdminComment holds a segment of ours."""
    return _SEGMENT.search(admin_comment or "") is not None


def strip_summary(admin_comment: str | None) -> str:
    """Remove our segments and the one space each was joined with; keep every other byte."""
    text = admin_comment or ""
    out = text
    for match in reversed(list(_SEGMENT.finditer(text))):  # right to left: spans stay valid
        start, end = match.span()
        if start > 0:
            start -= 1  # the space we wrote before it
        out = out[:start] + out[end:]
    return out


def merge_admin_comment(existing: str | None, summary: str) -> str:
    """Put ``summary`` into an AdminComment in place of an earlier one of ours."""
    base = strip_summary(existing)
    return f"{base} {summary}" if base else summary


def jobstats_payload(admin_comment: str) -> bytes | None:
    """Return what jobstats reads from an AdminComment (its own decoding), or None."""
    if not admin_comment.startswith(JOBSTATS_PREFIX):
        return None
    try:
        return gzip.decompress(base64.b64decode(admin_comment[len(JOBSTATS_PREFIX):]))
    except (ValueError, OSError, EOFError, zlib.error):
        return None


def admin_comment_text(existing: str | None, summary: str) -> tuple[str, bool]:
    """Return ``(AdminComment to hold, whether it carries summary)``.

    The summary is withheld when appending it would change what jobstats reads (see the
    module docstring); the text then is the existing one without our earlier segments.
    """
    base = strip_summary(existing)
    merged = merge_admin_comment(base, summary)
    foreign = jobstats_payload(base)
    if foreign is not None and jobstats_payload(merged) != foreign:
        return base, False
    return merged, True
