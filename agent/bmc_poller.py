"""Reads the BMC in a thread of its own, every ``bmc_interval_s``, into one energy counter.

BMCs answer in tens of milliseconds to seconds and refresh their figure every 1–10 s, so they
are never read by the 1 Hz sampler itself: this thread reads them and the sampler takes the
latest :class:`BmcSnapshot` under a lock, which never waits on the network. A failed read is
logged (once per outage, then at recovery), counted in ``jobenergy_agent_sensor_errors_total
{sensor="bmc"}``, and the node carries on.

The snapshot's ``total_uj`` only grows and never jumps by more than the time since the
previous answer allows: from the BMC's own energy counter where it has one (a counter that
goes back, e.g. after a BMC reboot, restarts from its new value), else by integrating the
power between answers (trapezoids over monotonic time: ``estimated``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.sensors.bmc import MAX_BMC_POWER_W, BmcError, BmcReading, BmcSensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BmcSnapshot:
    """The BMC's energy counter after its latest answer.

    Attributes:
        total_uj: Energy since the poller started, µJ (never decreases).
        estimated: Some of it was integrated from power readings.
        seq: Answers so far (a new value: a new BMC window has closed).
        power_w: The latest power reading, W (None when only a counter is read).
    """

    total_uj: int
    estimated: bool
    seq: int
    power_w: float | None = None


class BmcCounter:
    """Turns successive BMC answers into a never-decreasing energy counter (µJ)."""

    def __init__(self) -> None:
        self.total_uj = 0
        self.estimated = False
        self.seq = 0
        self._last: tuple[int, BmcReading] | None = None  # (monotonic ns, answer)

    def add(self, reading: BmcReading, mono_ns: int) -> BmcSnapshot:
        """Fold one answer, read at ``mono_ns``, into the counter."""
        last = self._last
        self._last = (mono_ns, reading)
        if last is not None:
            then_ns, before = last
            span_ns = max(0, mono_ns - then_ns)
            # No answer can add more than the bound power over the time it covers.
            limit_uj = MAX_BMC_POWER_W * span_ns // 1000
            if reading.energy_uj is not None and before.energy_uj is not None:
                delta_uj = reading.energy_uj - before.energy_uj
                if delta_uj < 0:  # the BMC's counter restarted (BMC reboot, reset)
                    delta_uj = reading.energy_uj
                self.total_uj += min(delta_uj, limit_uj)
            elif reading.power_w is not None and before.power_w is not None:
                mean_w = (reading.power_w + before.power_w) / 2
                self.total_uj += min(round(mean_w * span_ns / 1000), limit_uj)
                self.estimated = True
        self.seq += 1
        return BmcSnapshot(self.total_uj, self.estimated, self.seq, reading.power_w)


class BmcPoller:
    """Reads ``sensor`` every ``interval_s`` in a daemon thread; :meth:`latest` is cheap."""

    def __init__(self, sensor: BmcSensor, interval_s: float, metrics: AgentMetrics) -> None:
        self.sensor = sensor
        self.interval_s = interval_s
        self.metrics = metrics
        self.counter = BmcCounter()
        self.errors_total = 0
        self._latest: BmcSnapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def latest(self) -> BmcSnapshot | None:
        """Return the snapshot after the latest good answer (None before the first)."""
        with self._lock:
            return self._latest

    def poll_once(self) -> BmcSnapshot | None:
        """Read the BMC once; return the new snapshot, or None (logged, counted) on failure."""
        try:
            reading = self.sensor.read()
        except BmcError as err:
            self.errors_total += 1
            self.metrics.sensor_errors.labels("bmc").inc()
            if not self._failing:
                logger.error("BMC read failed sensor=%s err=%s", self.sensor.name, err)
            self._failing = True
            return None
        if self._failing:
            logger.info("BMC answers again sensor=%s", self.sensor.name)
            self._failing = False
        snapshot = self.counter.add(reading, time.monotonic_ns())
        with self._lock:
            self._latest = snapshot
        return snapshot

    def start(self) -> None:
        """Start the polling thread (reads at once, then every ``interval_s``)."""
        self._thread = threading.Thread(target=self._run, name="bmc-poller", daemon=True)
        self._thread.start()

    def stop(self, join_timeout_s: float = 5.0) -> None:
        """Stop the thread; a read in flight ends within the sensor's timeout."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(join_timeout_s)

    def _run(self) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a thread's top loop: log and keep polling
                logger.exception("BMC poll failed")
            next_s += self.interval_s
            now_s = time.monotonic()
            if next_s < now_s:
                next_s = now_s + self.interval_s
            self._stop.wait(next_s - now_s)
