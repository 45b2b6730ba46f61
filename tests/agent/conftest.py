"""Fixtures of the agent tests.

``derived``: what the collector derives from stored intervals (``collector/plan.py`` and
``collector/steps.py``), the oracle of the coalescing tests. The collector is imported only
by the tests that use it (skipped where the server stack is not installed).

``scancel``: a fake ``scancel`` executable that records each call's argv (energy limits and
budget actions run it by absolute path).

``clock``: the agent's clock (``time`` and ``datetime.now`` of the modules that read it),
moved only by the test: samples one simulated second apart, in a few milliseconds.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_NS = 3600 * 10**9


class Clock:
    """Wall and monotonic time that move only by :meth:`advance`."""

    def __init__(self, wall_ns: int) -> None:
        self.wall_ns = wall_ns
        self.mono_ns = 10**15

    def advance(self, seconds: float) -> None:
        self.wall_ns += round(seconds * 1e9)
        self.mono_ns += round(seconds * 1e9)

    @property
    def wall(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.wall_ns // 1000)

    def monotonic_ns(self) -> int:
        return self.mono_ns

    def monotonic(self) -> float:
        return self.mono_ns / 1e9

    def time_ns(self) -> int:
        return self.wall_ns

    def time(self) -> float:
        return self.wall_ns / 1e9

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Return the agent's clock, 35 s before the next UTC hour (a run crosses it)."""
    from jobenergy.agent import daemon, sampler
    from jobenergy.agent.gpu import attribution, nvml

    c = Clock((time.time_ns() // HOUR_NS + 1) * HOUR_NS - 35 * 10**9)

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return c.wall.astimezone(tz) if tz is not None else c.wall.replace(tzinfo=None)

    monkeypatch.setattr(sampler, "datetime", FakeDatetime)
    for module in (sampler, daemon, attribution, nvml):
        monkeypatch.setattr(module, "time", c)
    return c


@pytest.fixture(scope="session")
def derived() -> Callable[[list], dict]:
    """Return a function: wire intervals → the collector's totals that do not depend on how
    many intervals carry them (not the times first/last seen, nor the interval counts)."""
    try:
        import sqlalchemy  # noqa: F401 - the collector's own code derives the totals
    except ImportError:
        message = "the coalescing checks need the server extra: pip install -e '.[server]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from jobenergy.collector.plan import plan_batch
    from jobenergy.collector.steps import plan_steps
    from jobenergy.core.schema import Batch

    def derive(intervals: list) -> dict:
        batch = Batch(
            schema_version=1, cluster="c", node="n", boot_id="b", seq=0, intervals=intervals
        )
        plan = plan_batch(batch)
        return {
            # (job, component, source) → energy, estimated energy, covered s, wraps, resets,
            # device name
            "job": {
                k: (v[0], v[1], round(v[3], 9), v[6], v[7], v[8])
                for k, v in plan.job_totals.items()
            },
            "node": {k: (v[0], v[1]) for k, v in plan.node_totals.items()},
            "summary": {
                j: (s.uid, s.energy_uj, s.gpu_uj, round(s.gpu_s, 9), s.model, s.phase,
                    s.samples, s.annotated)
                for j, s in plan.jobs.items()
            },
            "hours": plan.job_hours,
            "phases": {k: (v[0], round(v[4], 9)) for k, v in plan.phase_energy.items()},
            "records": plan.phase_records,
            "steps": plan_steps(batch),
            "span": (
                (plan.progress[0], plan.progress[1], plan.progress[3]) if plan.progress else None
            ),
        }

    return derive


class FakeScancel:
    """An executable ``scancel`` script that appends each call's argv (tab-separated) to a
    log; ``str()`` is its path."""

    def __init__(self, root: Path) -> None:
        self.log = root / "scancel.calls"
        self.path = root / "bin" / "scancel"
        self.path.parent.mkdir()
        self.path.write_text(f'#!/bin/sh\n(IFS="\t"; printf "%s\\n" "$*") >> "{self.log}"\n')
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def __str__(self) -> str:
        return str(self.path)

    def calls(self) -> list[list[str]]:
        """Each call's arguments, in order."""
        if not self.log.exists():
            return []
        return [line.split("\t") for line in self.log.read_text().splitlines()]


@pytest.fixture
def scancel(tmp_path: Path) -> FakeScancel:
    return FakeScancel(tmp_path)
