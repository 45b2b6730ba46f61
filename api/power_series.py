"""Power over time from energy: a grid of time buckets and the exact apportionment of
intervals to it.

A series is a grid of buckets ``step_s`` seconds wide, aligned to the epoch: bucket ``b``
covers ``[b × step, (b + 1) × step)`` seconds since 1970 UTC (like Prometheus' query_range
steps, but aligned, so that a bucket has the same edges in every request and charts of
several requests line up). An interval's energy is taken as uniform within the interval and
goes to the buckets it overlaps in proportion to the overlap in µs, split by largest remainder
(as :func:`jobenergy.core.split.split_uj` does), so each line's bucket energies add up to the line's
energy exactly (DESIGN.md decisions 1 and 2). With a step of 3600 s this is how ingest splits
a job's energy over hours (:func:`jobenergy.core.carbon.split_over_hours`), so a job's hourly
series equals its ``job_energy_hour`` rows.

A point's power is the mean power over its bucket, ``energy / step``; it is ``None`` (a gap)
where no interval of the line overlaps the bucket, and 0.0 where intervals say 0 µJ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from jobenergy.core.units import UJ_PER_J

US_PER_S = 1_000_000
#: Most buckets one series has; a finer step is raised (the response says so).
MAX_POINTS = 1000
#: Bucket widths chosen by default (the smallest giving at most MAX_POINTS buckets), s.
#: Every one up to an hour divides an hour, and every one above is a whole number of hours.
NICE_STEPS_S = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                43200, 86400, 172800, 604800)
DAY_S = 86400
#: Largest step accepted from a request (a year).
MAX_STEP_S = 366 * DAY_S
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S}
_STEP_RE = re.compile(r"^\s*(\d{1,12})\s*([smhdw]?)\s*$")


class BadStep(ValueError):
    """A step that is not a positive whole number of seconds (or a duration like ``5m``)."""


def parse_step(value: str | None) -> int | None:
    """Return the step in seconds from ``30``, ``30s``, ``5m``, ``1h``, ``1d`` or ``1w``.

    Raises:
        BadStep: Anything else, 0, or more than :data:`MAX_STEP_S`.
    """
    if value is None or value.strip() == "":
        return None
    match = _STEP_RE.match(value)
    if match is None:
        raise BadStep(f"{value!r} is not a whole number of seconds nor a duration such as "
                      "30s, 5m, 1h, 1d")
    step_s = int(match.group(1)) * _UNITS_S[match.group(2) or "s"]
    if not 1 <= step_s <= MAX_STEP_S:
        raise BadStep(f"{value!r} is not between 1 s and {MAX_STEP_S} s")
    return step_s


def epoch_us(moment: datetime) -> int:
    """Return ``moment`` as integer µs since the epoch (exact, unlike ``timestamp()``)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US_PER_S + delta.microseconds


def iso_z(epoch_s: int) -> str:
    """Return ``2026-11-23T10:00:00Z`` for whole epoch seconds."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Grid:
    """Buckets ``first .. first + count - 1`` of ``step_s`` seconds.

    ``requested_step_s`` is the step the request asked for (None: chosen here);
    ``step_raised`` says it was raised (too many buckets, or finer than the data).
    """

    step_s: int
    first: int
    count: int
    requested_step_s: int | None = None
    step_raised: bool = False

    @property
    def step_us(self) -> int:
        """Bucket width, µs."""
        return self.step_s * US_PER_S

    @property
    def start_s(self) -> int:
        """Start of the first bucket, epoch seconds."""
        return self.first * self.step_s

    @property
    def end_s(self) -> int:
        """End of the last bucket, epoch seconds."""
        return (self.first + self.count) * self.step_s

    def times(self) -> list[int]:
        """Return each bucket's start, epoch seconds."""
        return [(self.first + i) * self.step_s for i in range(self.count)]


def _count(start_us: int, end_us: int, step_us: int) -> int:
    first = start_us // step_us
    last = max(-(-end_us // step_us), first + 1)
    return last - first


def _candidates(span_us: int) -> list[int]:
    steps = list(NICE_STEPS_S)
    # Beyond the list: whole days, as few as fit.
    days = max(8, -(-span_us // (US_PER_S * DAY_S * (MAX_POINTS - 1))))
    steps.extend(d * DAY_S for d in range(days, days + 3))
    return steps


def make_grid(start_us: int, end_us: int, step_s: int | None = None,
              multiple_of_s: int = 1) -> Grid:
    """Return the grid over ``[start_us, end_us)``, widened to bucket edges.

    Without ``step_s`` the step is the smallest of :data:`NICE_STEPS_S` (then whole days)
    that is a multiple of ``multiple_of_s`` and gives at most :data:`MAX_POINTS` buckets. A
    requested step that gives more buckets, or is not a multiple of ``multiple_of_s`` (data
    only hourly), is raised to the smallest such nice step above it, and the grid says so.
    """
    end_us = max(end_us, start_us)

    def fits(step: int) -> bool:
        return step % multiple_of_s == 0 and _count(start_us, end_us,
                                                    step * US_PER_S) <= MAX_POINTS

    chosen: int | None = None
    raised = False
    if step_s is not None and fits(step_s):
        chosen = step_s
    else:
        floor_s = step_s or 1
        for candidate in _candidates(end_us - start_us):
            if candidate >= floor_s and fits(candidate):
                chosen = candidate
                break
        if chosen is None:  # a request above every candidate that still does not fit
            chosen = -(-max(floor_s, (end_us - start_us) // US_PER_S // (MAX_POINTS - 1) + 1)
                       // multiple_of_s) * multiple_of_s
            while not fits(chosen):
                chosen += multiple_of_s
        raised = step_s is not None
    step_us = chosen * US_PER_S
    return Grid(step_s=chosen, first=start_us // step_us,
                count=_count(start_us, end_us, step_us), requested_step_s=step_s,
                step_raised=raised)


def apportion(start_us: int, end_us: int, energy_uj: int, step_us: int) -> list[tuple[int, int]]:
    """Split one interval's energy over the buckets it overlaps: ``[(bucket, µJ), ...]``.

    In proportion to the overlap in µs, by largest remainder (ties to the earlier bucket):
    the parts add up to ``energy_uj`` exactly.
    """
    first = start_us // step_us
    last = max((end_us - 1) // step_us, first)
    if first == last:
        return [(first, energy_uj)]
    if last == first + 1:
        # The usual crossing, over one edge: split_uj's result, without its bookkeeping.
        edge, span = last * step_us, end_us - start_us
        q1, r1 = divmod(energy_uj * (edge - start_us), span)
        q2, r2 = divmod(energy_uj * (end_us - edge), span)
        if q1 + q2 < energy_uj:  # one µJ left: the larger remainder, the first on a tie
            if r1 >= r2:
                q1 += 1
            else:
                q2 += 1
        return [(first, q1), (last, q2)]
    # split_uj over the overlaps (they add up to the span), inlined: with a step finer than
    # the intervals every interval comes here, thousands per request.
    span = end_us - start_us
    parts, remainders, given = [], [], 0
    for i, bucket in enumerate(range(first, last + 1)):
        weight = min(end_us, (bucket + 1) * step_us) - max(start_us, bucket * step_us)
        q, r = divmod(energy_uj * weight, span)
        parts.append([bucket, q])
        remainders.append((-r, i))
        given += q
    if given < energy_uj:
        for _, i in sorted(remainders)[:energy_uj - given]:
            parts[i][1] += 1
    return [(bucket, part) for bucket, part in parts]


@dataclass
class Line:
    """One line's energy per bucket of a grid, and which buckets any interval covered."""

    count: int
    energy_uj: list[int] = field(init=False)
    covered: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.energy_uj = [0] * self.count
        self.covered = [False] * self.count

    def add(self, index: int, energy_uj: int) -> None:
        """Add ``energy_uj`` to bucket ``index`` (of the grid) and mark it covered."""
        self.energy_uj[index] += energy_uj
        self.covered[index] = True

    def merge(self, other: Line) -> None:
        """Add another line of the same grid bucket by bucket."""
        for i in range(self.count):
            if other.covered[i]:
                self.add(i, other.energy_uj[i])

    @property
    def total_uj(self) -> int:
        """The line's energy over the grid."""
        return sum(self.energy_uj)

    def power_w(self, step_s: int) -> list[float | None]:
        """Return the mean power of each bucket, W (None where nothing covered it)."""
        scale = step_s * UJ_PER_J
        return [e / scale if c else None for e, c in zip(self.energy_uj, self.covered,
                                                          strict=True)]


class Lines:
    """Lines of one grid by key, filled bucket by bucket or interval by interval."""

    def __init__(self, grid: Grid) -> None:
        """Start with no line."""
        self.grid = grid
        self.by_key: dict[tuple[object, ...], Line] = {}

    def line(self, key: tuple[object, ...]) -> Line:
        """Return the line of ``key``, created empty if new."""
        line = self.by_key.get(key)
        if line is None:
            line = self.by_key[key] = Line(self.grid.count)
        return line

    def add_bucket(self, key: tuple[object, ...], bucket: int, energy_uj: int) -> None:
        """Add energy that lies wholly in bucket ``bucket`` (dropped outside the grid)."""
        index = bucket - self.grid.first
        if 0 <= index < self.grid.count:
            self.line(key).add(index, energy_uj)

    def add_interval(self, key: tuple[object, ...], start_us: int, end_us: int,
                     energy_uj: int) -> None:
        """Apportion one interval's energy (:func:`apportion`); parts outside are dropped."""
        for bucket, part in apportion(start_us, end_us, energy_uj, self.grid.step_us):
            self.add_bucket(key, bucket, part)
