"""Time series of a factor (carbon intensity, PUE): parsing and step intervals.

A series is a list of ``(time, value)`` points; each point holds its value from its time until
the next point. The last point holds for as long as the step before it (one hour when there is
a single point), so an hourly Electricity Maps export covers its last hour too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

MAX_POINTS = 1_000_000
_TIME_HEADERS = ("datetime", "timestamp", "time", "start", "date")
_VALUE_HEADERS = ("carbon intensity", "gco2", "co2", "pue", "value", "intensity")


def parse_time(value: str) -> datetime:
    """Parse ISO 8601 (``Z`` allowed; naive means UTC) or epoch seconds.

    Raises:
        ValueError: The text is neither.
    """
    text = value.strip()
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _pick(headers: list[str], wanted: tuple[str, ...], prefer: str | None) -> int | None:
    lowered = [h.strip().lower() for h in headers]
    for word in wanted:
        hits = [i for i, h in enumerate(lowered) if word in h]
        if prefer is not None:
            preferred = [i for i in hits if prefer in lowered[i]]
            hits = preferred or hits
        if hits:
            return hits[0]
    return None


def parse_series_csv(text: str, column: str | None = None) -> list[tuple[datetime, float]]:
    """Parse a CSV series, e.g. an Electricity Maps export.

    The time column is the first header containing ``datetime``/``timestamp``/``time``/
    ``start``/``date``; the value column is ``column`` when given (exact header, case-insensitive)
    or the first header containing ``carbon intensity`` (the ``LCA`` one preferred, as Electricity
    Maps shows), ``gco2``, ``pue`` or ``value``. Blank values are skipped.

    Raises:
        ValueError: No header, no time or value column, or a row that does not parse (the
            message gives the line).
    """
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    if not rows:
        raise ValueError("empty CSV")
    headers = rows[0]
    t_col = _pick(headers, _TIME_HEADERS, None)
    if column is not None:
        lowered = [h.strip().lower() for h in headers]
        v_col = lowered.index(column.lower()) if column.lower() in lowered else None
    else:
        v_col = _pick(headers, _VALUE_HEADERS, "lca")
    if t_col is None or v_col is None or t_col == v_col:
        raise ValueError(
            f"CSV needs a time column and a value column{f' named {column!r}' if column else ''};"
            f" headers are {headers}"
        )
    points = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            raw = row[v_col].strip()
            if not raw:
                continue
            points.append((parse_time(row[t_col]), float(raw)))
        except (IndexError, ValueError) as err:
            raise ValueError(f"CSV line {line}: {err}") from err
    return points


def step_intervals(
    points: Sequence[tuple[datetime, float]],
) -> list[tuple[datetime, datetime, float]]:
    """Return ``(start, end, value)`` per point, sorted; see the module docstring for ends.

    Raises:
        ValueError: No points, too many, or two points at the same time.
    """
    if not points:
        raise ValueError("a series needs at least one point")
    if len(points) > MAX_POINTS:
        raise ValueError(f"a series holds at most {MAX_POINTS} points, got {len(points)}")
    ordered = sorted(points, key=lambda p: p[0])
    out = []
    step = timedelta(hours=1)
    for (start, value), nxt in zip(ordered, [*ordered[1:], None], strict=True):
        if nxt is not None:
            if nxt[0] == start:
                raise ValueError(f"two points at {start.isoformat()}")
            step = nxt[0] - start
            end = nxt[0]
        else:
            end = start + step
        out.append((start, end, float(value)))
    return out
