"""CPU package and DRAM attribution (DESIGN.md decision 4).

For one source (a RAPL package or its DRAM zone) and one interval between two samples:

* No Slurm job on the node → the whole delta is the node's ``unattributed`` energy.
* Exactly one job active for the whole interval → the job gets all of it, as Slurm's own
  ConsumedEnergy does for an exclusive node.
* A job that lived only part of the interval (it started or ended inside it:
  :mod:`.lifetime`) pays the static part only for that part: its static weight is scaled by
  the time it lived, and the rest weighs for ``unattributed``. Alone on the node, it gets the
  node's static energy for its lifetime and the dynamic part by CPU time, the busy time of no
  job counting for it in proportion to its lifetime (the node is its own while it lives).
* Several jobs → the delta is cut in two parts:

  - **static** = ``min(delta, static_power_w × interval)`` is split by allocated CPUs
    (cpuset size); CPUs held by no job weigh for ``unattributed``. Idle cores a job holds
    are that job's cost.
  - **dynamic** = the rest, split by CPU time used in the interval (cgroup CPU usage);
    busy time of the node (``/proc/stat``) not used by any job (daemons, the OS) weighs for
    ``unattributed``. If nothing was busy the dynamic part follows the static weights.

Both parts use largest-remainder integer splits, so ``Σ jobs + unattributed == delta``
exactly. A job is *active* in an interval when its cgroup exists at the end of it (a new
cgroup's usage starts at zero, so its first interval counts) or existed at the start and
vanished before the end (its CPU time is what the Slurm root cgroup used beyond its live
children: a parent keeps the usage of removed children, in v1 and v2).

Per-step CPU time (the job's ``step_<S>`` cgroups) is carried along for the collector, which
splits each job's energy over its steps; no energy is split per step here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from operator import add

from jobenergy.agent.readings import CgroupSnapshot, JobCgroup
from jobenergy.core.split import split_uj

UNATTRIBUTED = ""  # key for the node's own account inside split weights


@dataclass(slots=True)  # not frozen: built per job per sample (readings.py)
class JobUsage:
    """One job's share basis for an interval.

    Attributes:
        cpu_ns: CPU time the job used during the interval, ns.
        cpus: Number of CPUs allocated to the job (cpuset size), 0 if unknown.
        ended: The job's cgroup vanished during the interval.
        uid: Owner's uid if the cgroup layout shows it.
        step_cpu_ns: CPU time each step of the job used during the interval, ns, for the
            steps whose cgroup exists at the end of it (a new step: its whole usage). A step
            that vanished during the interval is absent: its time is in ``cpu_ns`` only.
        alive_ns: How long the job existed inside the interval, ns; None for all of it.
        alive_from_ns: When, after the interval's start, ns (with ``alive_ns``).
    """

    cpu_ns: int
    cpus: int
    ended: bool = False
    uid: int | None = None
    step_cpu_ns: dict[str, int] = field(default_factory=dict)
    alive_ns: int | None = None
    alive_from_ns: int = 0


def job_usage(
    prev: CgroupSnapshot, cur: CgroupSnapshot, hinted: Collection[str] = ()
) -> dict[str, JobUsage]:
    """Return the CPU time each job used between two cgroup snapshots.

    Jobs present in ``cur`` are charged their usage delta (their whole usage if the cgroup is
    new or was recreated). Jobs that vanished share the root cgroup's usage not explained by
    live children, weighted by allocated CPUs. Jobs the Slurm prolog announced (``hinted``)
    that no snapshot saw — shorter than one sample interval — share that residual too (one
    weight each) and are active only when it is not zero, so an announced job that has not
    started yet never disturbs the split.

    Args:
        prev: Snapshot at the start of the interval.
        cur: Snapshot at its end.
        hinted: Jobs the prolog's job map listed at either sample.
    """
    usage: dict[str, JobUsage] = {}
    live_ns = 0
    for job_id, cg in cur.jobs.items():
        before = prev.jobs.get(job_id)
        delta_ns = cg.cpu_usage_ns
        if before is not None and cg.cpu_usage_ns >= before.cpu_usage_ns:
            delta_ns = cg.cpu_usage_ns - before.cpu_usage_ns
        else:
            before = None  # new or recreated job: every step's usage is new too
        live_ns += delta_ns
        usage[job_id] = JobUsage(
            delta_ns, len(cg.cpus), uid=cg.uid, step_cpu_ns=_step_deltas(before, cg)
        )

    vanished = {j: cg for j, cg in prev.jobs.items() if j not in cur.jobs}
    unseen = sorted(j for j in hinted if j not in cur.jobs and j not in prev.jobs)
    if not vanished and not unseen:
        return usage
    residual_ns = 0
    if cur.root_usage_ns is not None and prev.root_usage_ns is not None:
        root_delta_ns = cur.root_usage_ns - prev.root_usage_ns
        other_delta_ns = max(0, cur.other_usage_ns - prev.other_usage_ns)
        residual_ns = max(0, root_delta_ns - live_ns - other_delta_ns)
    weights = {j: max(1, len(cg.cpus)) for j, cg in vanished.items()}
    if residual_ns:
        weights.update({j: 1 for j in unseen})
    shares = split_uj(residual_ns, weights)  # integer split works for ns as for µJ
    for job_id, cg in vanished.items():
        usage[job_id] = JobUsage(shares[job_id], len(cg.cpus), ended=True, uid=cg.uid)
    for job_id in unseen:
        if shares.get(job_id):
            usage[job_id] = JobUsage(shares[job_id], 0, ended=True)
    return usage


def _step_deltas(before: JobCgroup | None, cg: JobCgroup) -> dict[str, int]:
    """Return each live step's CPU time over the interval, ns (a new step: all of its usage)."""
    if not cg.step_usage_ns:
        return {}
    prev_steps = before.step_usage_ns if before is not None else {}
    deltas: dict[str, int] = {}
    for step, now_ns in cg.step_usage_ns.items():
        then_ns = prev_steps.get(step)
        deltas[step] = now_ns - then_ns if then_ns is not None and now_ns >= then_ns else now_ns
    return deltas


def attribute_cpu(
    delta_uj: int,
    usage: Mapping[str, JobUsage],
    *,
    node_busy_ns: int,
    ncpus: int,
    static_uj: int,
    span_ns: int = 0,
) -> tuple[dict[str, int], int]:
    """Split one CPU-package or DRAM delta over the jobs active in the interval.

    Args:
        delta_uj: Energy measured on the source during the interval, µJ.
        usage: Active jobs and their CPU time / allocation / lifetime (:func:`job_usage`
            and :mod:`.lifetime`).
        node_busy_ns: Node-wide busy CPU time during the interval (``/proc/stat``), ns.
        ncpus: CPUs on the node.
        static_uj: Static (idle-floor) energy of the source for the interval, µJ.
        span_ns: The interval's length, ns (the scale of ``JobUsage.alive_ns``); 0 when
            unknown, which ignores lifetimes.

    Returns:
        (energy per job µJ, unattributed µJ); they add up to ``delta_uj`` exactly.
    """
    split = CpuSplit(usage, node_busy_ns=node_busy_ns, ncpus=ncpus, span_ns=span_ns)
    return split.split(delta_uj, static_uj)


class _Weights:
    """Integer weights fixed once, for :func:`jobenergy.core.split.split_uj` of many totals.

    :meth:`parts` returns what ``split_uj(total, weights)`` returns (floors, then the µJ left
    over one each to the largest remainders, ties in the weights' order), as a list in the
    weights' order, without rebuilding the weights for each total.
    """

    __slots__ = ("keys", "_nonzero", "_weights", "_sum")

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.keys = list(weights)
        self._weights = list(weights.values())
        for key, w in weights.items():
            if w < 0:
                raise ValueError(f"weight for {key!r} must be >= 0, got {w}")
        self._sum = sum(self._weights)
        self._nonzero = [i for i, w in enumerate(self._weights) if w]

    def parts(self, total_uj: int) -> list[int]:
        if total_uj < 0:
            raise ValueError(f"total_uj must be >= 0, got {total_uj}")
        weights, weight_sum = self._weights, self._sum
        if weight_sum == 0:
            if total_uj:
                raise ValueError("cannot split energy over zero total weight")
            return [0] * len(weights)
        if len(weights) == 1:
            return [total_uj]
        parts = [total_uj * w // weight_sum for w in weights]
        left = total_uj - sum(parts)
        if left:
            remainders = [total_uj * w % weight_sum for w in weights]
            # Largest remainder first; sorted() is stable, so ties keep the weights' order.
            order = sorted(self._nonzero, key=remainders.__getitem__, reverse=True)
            for i in order[:left]:
                parts[i] += 1
        return parts


_NO_WEIGHTS = _Weights({})  # never changed: shared by the splits without weights


class CpuSplit:
    """The weights of one interval's CPU/DRAM split, for every source of the interval.

    The weights (the jobs' lifetimes, allocations and CPU time, the node's busy time) are the
    same for every CPU package and DRAM zone of an interval, so they are computed once here
    and :meth:`split` applies them to each source's delta: the same integer splits as
    :func:`attribute_cpu` makes per source, in the same order, so the same results.

    Args: as :func:`attribute_cpu`, without the source's energies.
    """

    __slots__ = ("_aligned", "_busy", "_only", "_stretch_len", "_stretch_weights", "_usage")

    def __init__(
        self,
        usage: Mapping[str, JobUsage],
        *,
        node_busy_ns: int,
        ncpus: int,
        span_ns: int = 0,
    ) -> None:
        self._usage = usage
        self._only: str | None = None
        self._stretch_len = _NO_WEIGHTS
        self._stretch_weights: list[_Weights] = []
        self._busy = _NO_WEIGHTS
        self._aligned = False
        if not usage:
            return
        span_ns = max(0, span_ns)
        full = max(1, span_ns)
        lived = {
            j: full if span_ns == 0 or u.alive_ns is None else min(max(0, u.alive_ns), span_ns)
            for j, u in usage.items()
        }
        partial = any(t < full for t in lived.values())
        if len(usage) == 1 and not partial:
            (self._only,) = usage
            return
        alone_ns = self._static_weights(usage, lived, ncpus, full)

        jobs_busy_ns = sum(u.cpu_ns for u in usage.values())
        busy_weights: dict[str, int] = {j: u.cpu_ns for j, u in usage.items()}
        other_ns = max(0, node_busy_ns - jobs_busy_ns)
        busy_weights[UNATTRIBUTED] = other_ns
        if other_ns and any(alone_ns.values()):
            # The node is a job's while it is alone on it (the exclusive rule): so is the busy
            # time of no job during that part of the interval (taken as spread evenly over it).
            own = {j: other_ns * t // full for j, t in alone_ns.items()}
            busy_weights = {j: u.cpu_ns + own.get(j, 0) for j, u in usage.items()}
            busy_weights[UNATTRIBUTED] = other_ns - sum(own.values())
        if sum(busy_weights.values()) == 0:
            busy_weights = dict(lived)
            if sum(busy_weights.values()) == 0:
                busy_weights = {UNATTRIBUTED: 1}  # nobody lived in it: the node's
        self._busy = _Weights(busy_weights)
        # The usual interval: every job there all along, one stretch weighed over the same
        # keys in the same order as the busy time (split() then adds the two part lists).
        self._aligned = (
            len(self._stretch_weights) == 1 and self._stretch_weights[0].keys == self._busy.keys
        )

    def _static_weights(
        self,
        usage: Mapping[str, JobUsage],
        lived: Mapping[str, int],
        ncpus: int,
        full_ns: int,
    ) -> dict[str, int]:
        """Cut the interval's time into stretches and weigh who pays the static energy.

        In each stretch of the interval, the static energy of that stretch goes to the one
        job alive then (alone on the node: all of it), or over the jobs alive then by
        allocated CPUs (CPUs of no job: ``unattributed``; allocation unknown: evenly), or to
        ``unattributed`` when no job was alive. So jobs that follow each other on a node
        within one interval each pay the node's static power for their own part of it.

        Returns:
            The ns each job was alone on the node.
        """
        spans = {}
        for job_id, u in usage.items():
            start = 0 if u.alive_ns is None else min(max(0, u.alive_from_ns), full_ns)
            spans[job_id] = (start, min(full_ns, start + lived[job_id]))
        cuts = sorted({0, full_ns, *(t for span in spans.values() for t in span)})
        stretches = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        self._stretch_len = _Weights({str(i): b - a for i, (a, b) in enumerate(stretches)})
        alone_ns: dict[str, int] = {}
        for a, b in stretches:
            present = [j for j, (lo, hi) in spans.items() if lo <= a and hi >= b]
            if len(present) == 1:
                weights = {present[0]: 1}
                alone_ns[present[0]] = alone_ns.get(present[0], 0) + b - a
            elif present:
                weights = {j: usage[j].cpus for j in present}
                weights[UNATTRIBUTED] = max(0, ncpus - sum(weights.values()))
                if sum(weights.values()) == 0:
                    weights = dict.fromkeys(present, 1)
            else:
                weights = {UNATTRIBUTED: 1}
            self._stretch_weights.append(_Weights(weights))
        return alone_ns

    def split(self, delta_uj: int, static_uj: int) -> tuple[dict[str, int], int]:
        """Split one source's delta (its static part ``static_uj``, clamped to the delta).

        Returns:
            (energy per job µJ, unattributed µJ); they add up to ``delta_uj`` exactly.
        """
        if not self._usage:
            return {}, delta_uj
        if self._only is not None:
            return {self._only: delta_uj}, 0
        static_uj = max(0, min(delta_uj, static_uj))
        dynamic_uj = delta_uj - static_uj
        if self._aligned:  # the same sums, in the same key order, as the loops below
            (weights,) = self._stretch_weights
            shares = dict(zip(weights.keys, map(
                add, weights.parts(static_uj), self._busy.parts(dynamic_uj)), strict=True))
            return shares, shares.pop(UNATTRIBUTED, 0)
        # Static: over the stretches by their length, then in each over who was there.
        energies = self._stretch_len.parts(static_uj)
        shares: dict[str, int] = {UNATTRIBUTED: 0}
        get = shares.get
        for energy_uj, weights in zip(energies, self._stretch_weights, strict=True):
            for key, part in zip(weights.keys, weights.parts(energy_uj), strict=True):
                shares[key] = get(key, 0) + part
        busy = self._busy
        for key, part in zip(busy.keys, busy.parts(dynamic_uj), strict=True):
            shares[key] = get(key, 0) + part
        unattributed_uj = shares.pop(UNATTRIBUTED, 0)
        return shares, unattributed_uj


class StaticFloor:
    """Static power of one source: configured, or learned as the lowest power seen.

    The learned floor is the lowest average power over ``window_ns`` of consecutive intervals
    (each at least ``min_interval_ns``). Counters advance in steps (RAPL every ms, NVML's
    energy every few tens of ms, an emulator's every tick), so one short interval's power
    jitters by a step either way and its minimum lies low; averaging over 5 s keeps that
    error a fraction of a percent. On a node that is never idle the floor
    over-estimates the static part, which shifts energy from the CPU-time split to the
    allocation split (documented in the README).
    """

    def __init__(
        self,
        configured_w: float | None,
        min_interval_ns: int = 500_000_000,
        window_ns: int = 5_000_000_000,
    ) -> None:
        self._configured_uw = None if configured_w is None else int(configured_w * 1_000_000)
        self._min_interval_ns = min_interval_ns
        self._window_ns = window_ns
        self._learned_uw: int | None = None
        self._recent: deque[tuple[int, int]] = deque()  # (energy µJ, interval ns)
        self._recent_uj = 0
        self._recent_ns = 0
        self._after_stall = False

    @property
    def learned_w(self) -> float | None:
        """The learned floor, W (None until a full window was seen)."""
        return None if self._learned_uw is None else self._learned_uw / 1e6

    @property
    def power_w(self) -> float | None:
        """The static power in use, W: configured, else learned (None: not yet known)."""
        if self._configured_uw is not None:
            return self._configured_uw / 1e6
        return self.learned_w

    def static_uj(self, delta_uj: int, interval_ns: int) -> int:
        """Return the static energy for an interval and update the learned floor, µJ."""
        if interval_ns <= 0:
            return 0
        if self._configured_uw is not None:
            return self._configured_uw * interval_ns // 1_000_000_000
        self._learn(delta_uj, interval_ns)
        if self._learned_uw is None:
            return 0
        return self._learned_uw * interval_ns // 1_000_000_000

    def _learn(self, delta_uj: int, interval_ns: int) -> None:
        # A counter that did not move at all (a stalled or held RAPL zone) says nothing about
        # the static power: learning 0 from it would switch proration off for good; nor does
        # a short interval (a restart, a final sample). Either starts a new window.
        # The interval after a stalled one is skipped too: the counter resumed somewhere
        # inside it, so its mean power lies low.
        stalled = delta_uj <= 0
        if interval_ns < self._min_interval_ns or stalled or self._after_stall:
            self._after_stall = stalled
            self._recent.clear()
            self._recent_uj = self._recent_ns = 0
            return
        self._recent.append((delta_uj, interval_ns))
        self._recent_uj += delta_uj
        self._recent_ns += interval_ns
        while len(self._recent) > 1 and self._recent_ns - self._recent[0][1] >= self._window_ns:
            old_uj, old_ns = self._recent.popleft()
            self._recent_uj -= old_uj
            self._recent_ns -= old_ns
        if self._recent_ns >= self._window_ns:
            power_uw = self._recent_uj * 1_000_000_000 // self._recent_ns
            if self._learned_uw is None or power_uw < self._learned_uw:
                self._learned_uw = power_uw
