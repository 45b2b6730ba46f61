"""The whole node: reconcile the BMC's wall energy with what the counters measured.

RAPL and NVML see the CPU packages, DRAM and GPUs; the BMC sees the node at the wall (fans,
NICs, disks, power-supply losses too). Per BMC window (between two BMC answers the sampler
saw), with the measured sum ``M = Σ cpu + dram + gpu`` over the sampled intervals of the
window::

    other = BMC − M      when BMC ≥ M
    other = 0            otherwise: nothing is taken from the jobs, the window is flagged

Records, emitted on the sampled interval where the window closes:

* ``bmc`` / ``bmc`` — the BMC's energy of the window, the node's own (never attributed,
  like ``psys``); source ``bmc/flagged`` instead when the BMC was below the measured sum;
* ``other`` / ``bmc/other`` — ``other``, estimated, split over the jobs by the declared
  policy with largest remainders, so ``Σ jobs + unattributed == other`` exactly and, per
  window that is not flagged, ``M + other == BMC`` exactly.

Policies (``bmc_other_policy``): ``measured`` (default) weighs each job by its measured
energy in the window and the node's own account by its unattributed energy; ``allocated``
weighs each job by its allocated CPUs × the time it lived in the window, and the CPUs of no
job by the node's. ``measured`` falls back to ``allocated`` when nothing was measured (a
node with only a BMC), and ``allocated`` to the node's account when no job held a CPU.

The BMC's window and the samples' are aligned on the sample that first sees a new answer:
the offset is at most one sample interval plus the BMC's own delay, and does not add up, as
consecutive windows follow each other: every µJ of the BMC counter lands in exactly one
record. A record larger than the wire's power bound allows for its sampled interval (a long
BMC window on a large node) is carried over, exactly, to the next intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jobenergy.agent.bmc_poller import BmcSnapshot
from jobenergy.agent.records import JobRecord, SourceSample
from jobenergy.core.limits import MAX_SOURCE_POWER_W
from jobenergy.core.split import split_uj

Policy = Literal["measured", "allocated"]
MEASURED_COMPONENTS = ("cpu", "dram", "gpu")
BMC_SOURCE = "bmc"
FLAGGED_SOURCE = "bmc/flagged"
OTHER_SOURCE = "bmc/other"
_NODE = ""  # the node's own account in split weights


@dataclass(slots=True)
class _Window:
    """What the samples measured since the BMC window opened."""

    measured_uj: int = 0
    unattributed_uj: int = 0
    jobs_uj: dict[str, int] = field(default_factory=dict)
    job_cpu_us: dict[str, int] = field(default_factory=dict)  # allocated CPUs × µs alive
    node_cpu_us: int = 0  # the node's CPUs × µs


@dataclass(slots=True)
class _State:
    window: _Window
    last_total_uj: int | None
    last_seq: int | None
    backlog: dict[str, SourceSample]
    estimated: bool = False  # the BMC's figure is integrated power
    flagged: int = 0  # windows flagged so far
    windows: int = 0  # windows closed so far (flagged included)


class Reconciler:
    """Per node: BMC windows → ``bmc`` and ``other`` records (module docstring).

    :meth:`add` works on a copy of the state; :meth:`commit` keeps it once the interval is
    accepted, so an interval that fails its checks leaves the reconciliation as it was.
    """

    def __init__(self, policy: Policy = "measured") -> None:
        self.policy = policy
        self._state = _State(_Window(), None, None, {})
        self._staged: _State | None = None

    def add(
        self,
        sources: list[SourceSample],
        jobs: list[JobRecord],
        bmc: BmcSnapshot | None,
        *,
        span_us: int,
        ncpus: int,
    ) -> list[SourceSample]:
        """Account one sampled interval; return the records to add to it.

        Args:
            sources: The interval's attributed sources (cpu, dram, gpu, psys).
            jobs: Its jobs (allocated CPUs and lifetimes).
            bmc: The BMC's latest snapshot at the interval's end (None: no answer yet).
            span_us: The interval's length, µs.
            ncpus: CPUs of the node (0 if unknown).
        """
        old = self._state
        window = _Window(
            old.window.measured_uj, old.window.unattributed_uj, dict(old.window.jobs_uj),
            dict(old.window.job_cpu_us), old.window.node_cpu_us,
        )
        state = _State(window, old.last_total_uj, old.last_seq, dict(old.backlog),
                       old.estimated, old.flagged, old.windows)
        self._staged = state
        for src in sources:
            if src.component not in MEASURED_COMPONENTS:
                continue
            window.measured_uj += src.measured_uj
            window.unattributed_uj += src.unattributed_uj
            for job_id, energy_uj in src.jobs_uj.items():
                window.jobs_uj[job_id] = window.jobs_uj.get(job_id, 0) + energy_uj
        window.node_cpu_us += ncpus * span_us
        for job in jobs:
            if job.cpus:
                alive_us = span_us if job.alive_us is None else min(job.alive_us, span_us)
                window.job_cpu_us[job.job_id] = (
                    window.job_cpu_us.get(job.job_id, 0) + job.cpus * alive_us)
        if bmc is not None and bmc.seq != state.last_seq:
            if state.last_total_uj is not None:
                state.windows += 1
                if self._close(state, bmc):
                    state.flagged += 1
            # The first answer is the baseline: what was measured before it is not compared.
            state.window = _Window()
            state.last_total_uj, state.last_seq = bmc.total_uj, bmc.seq
            state.estimated = bmc.estimated
        # Half the wire's bound: the coalescer's merged intervals stay far inside it too.
        return self._emit(state, MAX_SOURCE_POWER_W * span_us // 2)

    def commit(self) -> None:
        """Keep the state :meth:`add` made (the interval was accepted)."""
        if self._staged is not None:
            self._state = self._staged
            self._staged = None

    @property
    def flagged_total(self) -> int:
        """BMC windows so far whose figure was below the measured sum."""
        return self._state.flagged

    @property
    def windows_total(self) -> int:
        """BMC windows closed so far (flagged ones included)."""
        return self._state.windows

    @property
    def started(self) -> bool:
        """A BMC answer has been seen (records follow on every interval from now on)."""
        return self._state.last_total_uj is not None

    def _close(self, state: _State, bmc: BmcSnapshot) -> bool:
        """Close the window at ``bmc``; put its records in the backlog; return flagged."""
        assert state.last_total_uj is not None
        window = state.window
        bmc_uj = bmc.total_uj - state.last_total_uj
        other_uj = bmc_uj - window.measured_uj
        flagged = other_uj < 0
        source = FLAGGED_SOURCE if flagged else BMC_SOURCE
        _carry(state.backlog, SourceSample("bmc", source, bmc_uj, {}, bmc_uj,
                                           estimated=bmc.estimated))
        state.estimated = bmc.estimated
        if flagged:
            return True
        shares = split_uj(other_uj, self._weights(window))
        node_uj = shares.pop(_NODE, 0)
        jobs_uj = {j: uj for j, uj in shares.items() if uj}
        _carry(state.backlog, SourceSample("other", OTHER_SOURCE, other_uj, jobs_uj, node_uj,
                                           estimated=True))
        return False

    def _weights(self, window: _Window) -> dict[str, int]:
        if self.policy == "measured" and window.measured_uj:
            weights = dict(window.jobs_uj)
            weights[_NODE] = window.unattributed_uj
            return weights
        weights = dict(window.job_cpu_us)
        weights[_NODE] = max(0, window.node_cpu_us - sum(weights.values()))
        if not any(weights.values()):
            weights[_NODE] = 1  # no CPU known anywhere: the node's
        return weights

    @staticmethod
    def _emit(state: _State, limit_uj: int) -> list[SourceSample]:
        """Return the records due now: the backlog, each cut at ``limit_uj``.

        Once the BMC has answered, ``bmc`` and ``bmc/other`` are on every interval (0 µJ
        when no window closed), so the agent's coalescer keeps merging intervals (it cuts a
        stored interval where the set of sources changes); ``bmc/flagged`` appears only
        where a flagged window's energy is sent.
        """
        if state.last_total_uj is None:
            return []
        out = []
        for source, component in ((BMC_SOURCE, "bmc"), (OTHER_SOURCE, "other")):
            if source not in state.backlog:
                out.append(SourceSample(component, source, 0, {}, 0,
                                        estimated=component == "other" or state.estimated))
        for source in sorted(state.backlog):
            record = state.backlog.pop(source)
            now, later = _cut(record, limit_uj)
            out.append(now)
            if later is not None:
                state.backlog[source] = later
        out.sort(key=lambda s: (s.component != "bmc", s.source))
        return out


def _carry(backlog: dict[str, SourceSample], record: SourceSample) -> None:
    """Add ``record`` to what is due for its source (sums: conservation holds)."""
    due = backlog.get(record.source)
    if due is None:
        backlog[record.source] = record
        return
    jobs = dict(due.jobs_uj)
    for job_id, energy_uj in record.jobs_uj.items():
        jobs[job_id] = jobs.get(job_id, 0) + energy_uj
    backlog[record.source] = SourceSample(
        due.component, due.source, due.measured_uj + record.measured_uj, jobs,
        due.unattributed_uj + record.unattributed_uj,
        estimated=due.estimated or record.estimated,
    )


def _cut(record: SourceSample, limit_uj: int) -> tuple[SourceSample, SourceSample | None]:
    """Split ``record`` into what fits in ``limit_uj`` now and the rest (both conserving)."""
    if record.measured_uj <= limit_uj:
        return record, None
    weights = dict(record.jobs_uj)
    weights[_NODE] = record.unattributed_uj
    now = split_uj(limit_uj, weights)
    now_node = now.pop(_NODE)
    later_jobs = {j: uj - now[j] for j, uj in record.jobs_uj.items() if uj - now[j]}
    return (
        SourceSample(record.component, record.source, limit_uj,
                     {j: uj for j, uj in now.items() if uj}, now_node,
                     estimated=record.estimated),
        SourceSample(record.component, record.source, record.measured_uj - limit_uj,
                     later_jobs, record.unattributed_uj - now_node,
                     estimated=record.estimated),
    )
