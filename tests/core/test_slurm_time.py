"""Slurm's time forms (sacct -S/-E), the one parser of the CLI, the sync and the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobenergy.core.slurm_time import SlurmTimeError, parse_slurm_time

CET = timezone(timedelta(hours=1))
NOW = datetime(2026, 12, 2, 13, 45, 30, 123456, tzinfo=CET)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=CET)


@pytest.mark.parametrize(("text", "expected"), [
    ("today", at(2026, 12, 2)),
    ("midnight", at(2026, 12, 2)),
    ("noon", at(2026, 12, 2, 12)),
    ("fika", at(2026, 12, 2, 15)),
    ("teatime", at(2026, 12, 2, 16)),
    ("TODAY", at(2026, 12, 2)),
    ("10:00", at(2026, 12, 2, 10)),
    ("10:00:05", at(2026, 12, 2, 10, 0, 5)),
    ("10:00PM", at(2026, 12, 2, 22)),
    ("12:30am", at(2026, 12, 2, 0, 30)),
    ("12:30 pm", at(2026, 12, 2, 12, 30)),
    ("1120", at(2026, 11, 20)),
    ("112025", at(2025, 11, 20)),
    ("1120-08:30", at(2026, 11, 20, 8, 30)),
    ("11/20", at(2026, 11, 20)),
    ("11/20/25", at(2025, 11, 20)),
    ("11/20/2025-08:30:10", at(2025, 11, 20, 8, 30, 10)),
    ("11.20", at(2026, 11, 20)),
    ("11.20.24-23:59", at(2024, 11, 20, 23, 59)),
    ("1224", at(2025, 12, 24)),  # later in the year than today: last year's, sacct looks back
    ("2026-11-20", at(2026, 11, 20)),
    ("2026-11-20T10:00", at(2026, 11, 20, 10)),
    ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ("2026-11-20T10:00:00+02:00", datetime(2026, 11, 20, 8, tzinfo=UTC)),
    ("now", NOW),
    ("now-5", NOW - timedelta(seconds=5)),
    ("now-5minutes", NOW - timedelta(minutes=5)),
    ("now-5min", NOW - timedelta(minutes=5)),
    ("now-2hours", NOW - timedelta(hours=2)),
    ("now+1day", NOW + timedelta(days=1)),
    ("now-3days", NOW - timedelta(days=3)),
    ("now-1weeks", NOW - timedelta(weeks=1)),
])
def test_every_sacct_form(text: str, expected: datetime) -> None:
    assert parse_slurm_time(text, now=NOW, tz=CET) == expected


@pytest.mark.parametrize("text", [
    "nowgarbage", "now-5fortnights", "now-", "now5", "yesterday", "13/01", "02/30", "1340",
    "25:00", "13:00PM", "10:60", "11/20/2025-25:00", "2026-13-01", "2026-11-20T10", "",
    "11/20/19999", "1120-8", "0229",  # no 29 February in 2026 nor in 2025
])
def test_anything_else_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(SlurmTimeError, match="MMDD"):
        parse_slurm_time(text, now=NOW, tz=CET)


def test_bare_numbers_are_mmdd_for_people_and_epoch_seconds_for_the_api() -> None:
    assert parse_slurm_time("1120", now=NOW, tz=CET) == at(2026, 11, 20)
    assert parse_slurm_time("1120", now=NOW, epoch=True) == datetime(
        1970, 1, 1, 0, 18, 40, tzinfo=UTC)
    assert parse_slurm_time("1796217116.5", now=NOW, epoch=True) == datetime.fromtimestamp(
        1796217116.5, UTC)
    assert parse_slurm_time("now-1hours", now=NOW, epoch=True) == NOW - timedelta(hours=1)


def test_out_of_range_is_refused() -> None:
    with pytest.raises(SlurmTimeError, match="1970 and 2100"):
        parse_slurm_time("99999999999", epoch=True)
    # The API's epoch seconds, as it always read them: signs, exponents, far out of range.
    for text in ("-1e12", "1e12", "1e999", "-5"):
        with pytest.raises(SlurmTimeError, match="1970 and 2100"):
            parse_slurm_time(text, epoch=True)
    assert parse_slurm_time("1.7e9", epoch=True) == datetime.fromtimestamp(1.7e9, UTC)
    with pytest.raises(SlurmTimeError, match="or epoch seconds"):
        parse_slurm_time("yesterday", epoch=True)
    with pytest.raises(SlurmTimeError, match="1970 and 2100"):
        parse_slurm_time("now+999999999weeks")
    with pytest.raises(SlurmTimeError, match="1970 and 2100"):
        parse_slurm_time("2101-01-01")


def test_local_zone_by_default() -> None:
    parsed = parse_slurm_time("today")
    assert parsed.tzinfo is not None and (parsed.hour, parsed.minute) == (0, 0)
