"""Slurm's time arguments, as ``sacct -S/-E`` reads them: the one time parser of jobenergy.

The forms (sacct(1), "Valid time formats"), in the caller's time zone:

    HH:MM[:SS][AM|PM]            today at that time
    MMDD[YY][-HH:MM[:SS]]        that day (this year, or the year before when it is ahead)
    MM.DD[.YY][-HH:MM[:SS]]
    MM/DD[/YY][-HH:MM[:SS]]
    YYYY-MM-DD[THH:MM[:SS]]      (also a zone offset, and fractions of a second)
    today, midnight, noon, fika (15:00), teatime (16:00)
    now[{+|-}count[seconds|minutes|hours|days|weeks]]   (seconds by default)

With ``epoch=True`` (the API's ``start``/``end``), a bare number is epoch seconds instead of
``MMDD[YY]``: the API has always taken epoch seconds, and what sacct means by ``1120`` is
sent to it as ISO 8601 by the command-line tools. Anything else is refused with a message
naming the forms: never silently read as something else.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

#: Seconds per unit of ``now±count<unit>`` (Slurm's words, singular and plural, and the
#: usual abbreviations).
_UNITS_S = {
    "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86_400, "day": 86_400, "days": 86_400,
    "w": 604_800, "week": 604_800, "weeks": 604_800,
}
_WORDS_H = {"today": 0, "midnight": 0, "noon": 12, "fika": 15, "teatime": 16}
_NOW = re.compile(r"now(?:(?P<sign>[+-])(?P<count>\d{1,9})(?P<unit>[a-z]*))?", re.I)
_CLOCK = r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?"
_HOUR = re.compile(_CLOCK + r"\s*(?P<ampm>[AaPp][Mm])?")
_DATE = re.compile(
    r"(?:(?P<m1>\d{2})(?P<d1>\d{2})(?P<y1>\d{2})?"
    r"|(?P<m2>\d{1,2})(?P<sep>[./])(?P<d2>\d{1,2})(?:(?P=sep)(?P<y2>\d{2}|\d{4}))?)"
    r"(?:-" + _CLOCK + r")?")
#: Epoch seconds (``epoch=True``): as the API has always read them, exponents included.
_EPOCH = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
#: What :class:`SlurmTimeError` lists as accepted.
FORMS = ("HH:MM[:SS][AM|PM], MMDD[YY][-HH:MM[:SS]], MM.DD[.YY][-HH:MM[:SS]], "
         "MM/DD[/YY][-HH:MM[:SS]], YYYY-MM-DD[THH:MM[:SS]], today, midnight, noon, fika, "
         "teatime, now[{+|-}count[seconds|minutes|hours|days|weeks]]")
#: Times jobenergy stores are between these (core/schema.check_time).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


class SlurmTimeError(ValueError):
    """A time argument in none of Slurm's forms (the message names them)."""


def parse_slurm_time(text: str, *, now: datetime | None = None, tz: tzinfo | None = None,
                     epoch: bool = False) -> datetime:
    """Return the aware time ``text`` names.

    Args:
        text: The argument, e.g. ``now-2hours``, ``11/20``, ``2026-11-20T10:00``.
        now: The present (default: now), for relative forms and defaults.
        tz: The zone of times that name none (default: the local zone, as sacct).
        epoch: Read a bare number as epoch seconds (the API), not as ``MMDD[YY]``.

    Raises:
        SlurmTimeError: Not one of the forms, or not a valid date or time, or outside
            1970-2100.
    """
    raw = text.strip()
    current = (now or datetime.now(UTC)).astimezone(tz)
    parsed = _parse(raw, current, epoch)
    if parsed is None:
        forms = f"{FORMS}, or epoch seconds" if epoch else FORMS
        raise SlurmTimeError(f"invalid time {text[:64]!r}: use {forms}")
    if not _EARLIEST <= parsed < _LATEST:
        raise SlurmTimeError(f"time {text[:64]!r} is not between 1970 and 2100")
    return parsed


def _parse(raw: str, now: datetime, epoch: bool) -> datetime | None:
    lowered = raw.lower()
    if lowered in _WORDS_H:
        return now.replace(hour=_WORDS_H[lowered], minute=0, second=0, microsecond=0)
    if (m := _NOW.fullmatch(raw)) is not None:
        if m["sign"] is None:
            return now
        unit_s = _UNITS_S.get(m["unit"].lower())
        if unit_s is None:
            return None
        try:
            delta = timedelta(seconds=int(m["count"]) * unit_s)
            return now + delta if m["sign"] == "+" else now - delta
        except OverflowError:  # beyond datetime's range: refused as out of 1970-2100
            return now.replace(year=9999) if m["sign"] == "+" else now.replace(year=1)
    if epoch and _EPOCH.fullmatch(raw):
        seconds = float(raw)
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):  # beyond datetime: out of 1970-2100
            return datetime.max.replace(tzinfo=UTC) if seconds > 0 else datetime.min.replace(
                tzinfo=UTC)
    if (m := _HOUR.fullmatch(raw)) is not None:
        clock = _clock(m["h"], m["mi"], m["s"], m["ampm"])
        return None if clock is None else now.replace(
            hour=clock[0], minute=clock[1], second=clock[2], microsecond=0)
    if (m := _DATE.fullmatch(raw)) is not None:
        return _date(m, now)
    return _iso(raw, now)


def _clock(h: str, mi: str, s: str | None, ampm: str | None) -> tuple[int, int, int] | None:
    hour, minute, second = int(h), int(mi), int(s or 0)
    if ampm is not None:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.lower() == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return hour, minute, second


def _date(m: re.Match[str], now: datetime) -> datetime | None:
    month = int(m["m1"] or m["m2"])
    day = int(m["d1"] or m["d2"])
    year_text = m["y1"] or m["y2"]
    clock = (0, 0, 0) if m["h"] is None else _clock(m["h"], m["mi"], m["s"], None)
    if clock is None:
        return None
    year = now.year if year_text is None else (
        int(year_text) + 2000 if len(year_text) == 2 else int(year_text))
    try:
        moment = now.replace(year=year, month=month, day=day, hour=clock[0], minute=clock[1],
                             second=clock[2], microsecond=0)
    except ValueError:
        return None
    if year_text is None and moment > now:
        # sacct looks back: a day later in the year than today is last year's.
        try:
            moment = moment.replace(year=year - 1)
        except ValueError:  # 29 February
            return None
    return moment


def _iso(raw: str, now: datetime) -> datetime | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?"
                        r"(Z|[+-]\d{2}:?\d{2})?", raw):
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=now.tzinfo)
