"""Time series of a factor (carbon intensity, PUE): parsing and step intervals.

A series is a list of ``(time, value)`` points; each point holds its value from its time until
the next point. The last point holds for as long as the step before it (one hour when there is
a single point), so an hourly Electricity Maps export covers its last hour too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from jobenergy.core.schema import check_time

MAX_POINTS = 1_000_000


class SeriesTooLarge(ValueError):
    """A series with more points than allowed (the collector answers 413)."""
_TIME_HEADERS = ("datetime", "timestamp", "time", "start", "date")
_VALUE_HEADERS = ("carbon intensity", "gco2", "co2", "pue", "value", "intensity")


def parse_time(value: str) -> datetime:
    """Parse ISO 8601 (``Z`` allowed; naive means UTC) or epoch seconds, 1970 to 2100.

    Raises:
        ValueError: The text is neither, or the time is out of that range.
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    else:
        try:
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        except (ValueError, OverflowError, OSError) as err:
            raise ValueError(f"time {text!r}: epoch seconds out of range") from err
    return check_time(parsed)


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


def parse_series_csv(
    text: str | Iterable[str], column: str | None = None, max_points: int = MAX_POINTS
) -> list[tuple[datetime, float]]:
    """Parse a CSV series, e.g. an Electricity Maps export, row by row.

    ``text`` is the whole CSV or its lines (e.g. a text stream, which is read as it is parsed).
    The time column is the first header containing ``datetime``/``timestamp``/``time``/
    ``start``/``date``; the value column is ``column`` when given (exact header, case-insensitive)
    or the first header containing ``carbon intensity`` (the ``LCA`` one preferred, as Electricity
    Maps shows), ``gco2``, ``pue`` or ``value``. Blank values are skipped.

    Raises:
        SeriesTooLarge: More than ``max_points`` points (parsing stops there).
        ValueError: No header, no time or value column, or a row that does not parse, e.g. a
            field larger than the csv module's limit (the message gives the line).
    """
    lines = io.StringIO(text.lstrip("\ufeff")) if isinstance(text, str) else text
    reader = csv.reader(lines)
    try:
        return _parse_rows(reader, column, max_points)
    except csv.Error as err:
        raise ValueError(f"CSV line {reader.line_num}: {err}") from err


def _parse_rows(
    reader: Iterable[list[str]], column: str | None, max_points: int
) -> list[tuple[datetime, float]]:
    rows = iter(reader)
    headers = next(rows, None)
    if headers is None:
        raise ValueError("empty CSV")
    if headers:
        headers[0] = headers[0].lstrip("\ufeff")
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
    points: list[tuple[datetime, float]] = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            raw = row[v_col].strip()
            if not raw:
                continue
            point = (parse_time(row[t_col]), float(raw))
        except (IndexError, ValueError) as err:
            raise ValueError(f"CSV line {line}: {err}") from err
        if len(points) >= max_points:
            raise SeriesTooLarge(f"a series holds at most {max_points} points (CSV line {line})")
        points.append(point)
    return points


def step_intervals(
    points: Sequence[tuple[datetime, float]], max_points: int = MAX_POINTS
) -> list[tuple[datetime, datetime, float]]:
    """Return ``(start, end, value)`` per point, sorted; see the module docstring for ends.

    Raises:
        SeriesTooLarge: More than ``max_points`` points.
        ValueError: No points, or two points at the same time.
    """
    if not points:
        raise ValueError("a series needs at least one point")
    if len(points) > max_points:
        raise SeriesTooLarge(f"a series holds at most {max_points} points, got {len(points)}")
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
