"""Per-job energy limits (``sbatch --energy-limit=2.5kWh``), enforced live by the node agent.

The SPANK plugin turns ``--energy-limit`` into integer µJ; the node prolog writes it, with
the job's node count, into the job map (``energy_limit_uj=``, ``nodes=``:
:mod:`.jobmap`). After every sampled interval the agent adds each limited job's energy on
this node (its µJ of every source: CPU packages, DRAM, GPUs) and compares it with the job's
share of the limit here:

* **Multi-node jobs**: the limit is split evenly over the job's nodes (``limit // nodes``,
  at least 1 µJ) and each node's agent enforces its share, so no agent has to ask the
  others. A node that reaches its share acts for the whole job (``scancel`` cancels every
  node's part): a job whose nodes draw unevenly is stopped before its total reaches the
  limit, never after it.
* At ``limit_warn_fraction`` (0.9) of the share the job gets ``limit_warn_signal`` (SIGUSR1,
  which a training loop can catch to checkpoint), once, with ``scancel --signal=USR1 --full``
  (``--full``: the batch shell too, not only the steps).
* At 100 %, ``limit_policy``: ``cancel`` (the default) runs ``scancel --signal=TERM --full``
  then ``scancel``, which ends the job as CANCELLED after Slurm's KillWait; ``warn`` sends
  the warning signal once more (the limit is reached) and lets the job run.

**Budgets** (``running_policy`` warn|cancel of ``jobenergy budget set``) are decided by the
collector, which sees every node's jobs: its answer to a batch names the batch's running jobs
under a budget at 90 % (``warn``) or 100 % (``exceeded`` under ``warn``, ``cancel``), parsed
strictly by :mod:`.budget_actions`. :meth:`EnergyLimits.budget_answer` queues them (the
pusher's thread); the next :meth:`EnergyLimits.observe` (the sampling thread, which owns every
record) takes those whose job is in this node's map and not ended, with the same signals,
records and ``scancel`` worker as a job's own limit; an action naming any other job is
ignored and counted. Each record then also holds ``budget_id=``: the budget that took the
job's latest action (actions only grow stronger, so the strongest: the epilog's
``energy_limit_action``). The job's energy recorded for a budget action is what this agent
counted of it on this node since the agent started (a job without ``--energy-limit`` has no
record before it).

**Close watch.** The collector sees a job's energy only once its stored interval (up to
``store_interval_s``, 10 s) is sealed and pushed, and answers only pushes, so a budget would
be enforced up to two store intervals late. From a budget's warning to its cancel or
``exceeded``, while such a job runs here, :attr:`EnergyLimits.watching` is True and the
daemon stores and pushes every sampled interval (``interval_s``): enforcement then lags by a
push, one ``budget_state_interval_s`` and a push, not by two store intervals. It costs rows
only between 90 % and 100 % of a budget, and only while the collector keeps saying so: each
answer naming the job's warning renews a lease of :data:`WATCH_LEASE_S`, an answer without it
(the budget raised, deleted or reset) ends it, and so does silence (a collector outage, when
watching helps nobody and would fill the spool ten times faster). A restarted agent watches
again once an answer names the job.

Each action is taken at most once per job and node, whoever asks for it. What was done is written to
``<limit_dir>/<job_id>`` (root's, 0600) *before* ``scancel`` runs, so an agent restart
neither repeats a signal nor forgets the energy counted so far (written at least every
``_PERSIST_EVERY_S``; energy of the agent's own downtime is the node's unattributed, as
everywhere). The node epilog reads that file into the job's end event (tags
``energy_limit_warned_uj``, ``energy_limit_exceeded_uj``, ``energy_limit_cancelled_uj``: the
job's energy on this node when the agent acted; ``energy_limit_action``;
``energy_limit_budget_id`` when a budget took it), which is how the
reason reaches the job's API record and, through ``jobenergy slurm sync``, its
AdminComment. The file is removed once the job has left the map (the epilog has run).

Safety: the limit and the node count come from the root-written job map only; a job id
must be Slurm's digits before it reaches ``scancel``, which runs from an argv list (no
shell) at an absolute path, so a job can neither make the agent run a command nor signal
another job. ``scancel`` runs on a worker thread: a slow slurmctld never delays sampling.
A failed ``scancel`` is logged and counted, not retried (it may have half-worked).
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from jobenergy.agent.budget_actions import ACTIONS, BudgetAction, parse_budget_actions
from jobenergy.agent.jobmap import SLURM_JOB_ID_RE, JobMapEntry
from jobenergy.agent.records import SampledInterval

logger = logging.getLogger(__name__)

__all__ = ["SLURM_JOB_ID_RE", "EnergyLimits", "LimitRecord", "parse_record"]

#: The record's keys in the order written: the epilog takes the last action key as the job's.
_RECORD_KEYS = ("limit_uj", "energy_uj", "budget_id", "warned_uj", "exceeded_uj",
                "cancelled_uj")
#: Action strength (budget actions queued between two intervals: the strongest is kept).
_STRENGTH = {action: n for n, action in enumerate(ACTIONS)}
#: How often a limited job's running energy is written to its file (actions: at once).
_PERSIST_EVERY_S = 5.0
#: A job missing from the map this long is forgotten (a map read that failed once must not
#: reset a job's count and signal it again).
_FORGET_AFTER_S = 60.0
_SCANCEL_TIMEOUT_S = 30.0
#: How long one answer naming a job's budget warning keeps the close watch on (module doc).
WATCH_LEASE_S = 30.0


@dataclass(slots=True)
class LimitRecord:
    """One limited job on this node.

    Attributes:
        limit_uj: This node's share of the job's limit, µJ (None: no ``--energy-limit``, a
            budget acted on the job).
        energy_uj: The job's energy on this node so far, µJ.
        budget_id: The budget that took the latest action (None: the job's own limit did).
        warned_uj: Its energy when the warning signal was sent (None: not yet).
        exceeded_uj: When the limit was reached under the ``warn`` policy.
        cancelled_uj: When the job was cancelled.
    """

    limit_uj: int | None = None
    energy_uj: int = 0
    budget_id: int | None = None
    warned_uj: int | None = None
    exceeded_uj: int | None = None
    cancelled_uj: int | None = None

    def text(self) -> str:
        """Return the record file's ``key=value`` lines, actions in the order taken."""
        return "".join(f"{key}={getattr(self, key)}\n" for key in _RECORD_KEYS
                       if getattr(self, key) is not None)


def parse_record(text: str) -> LimitRecord | None:
    """Parse a record file; None when it holds neither a valid ``limit_uj`` nor ``budget_id``."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in _RECORD_KEYS and value.isascii() and value.isdigit() and len(value) < 20:
            values[key] = int(value)
    if not values.get("limit_uj") and not values.get("budget_id"):
        return None
    values["limit_uj"] = values.get("limit_uj") or None
    return LimitRecord(**values)


def node_share_uj(limit_uj: int, nodes: int | None) -> int:
    """Return one node's share of a job's limit: an even split, rounded down, at least 1."""
    return max(1, limit_uj // max(1, nodes or 1))


def scancel_argvs(scancel: str, job_id: str, action: str, warn_signal: str) -> list[list[str]]:
    """Return the ``scancel`` command lines of an action (``warn``, ``exceeded``, ``cancel``).

    Raises:
        ValueError: ``job_id`` is not a Slurm job id (digits).
    """
    if not SLURM_JOB_ID_RE.fullmatch(job_id):
        raise ValueError(f"not a Slurm job id: {job_id[:80]!r}")
    if action == "cancel":
        return [[scancel, "--signal=TERM", "--full", job_id], [scancel, job_id]]
    return [[scancel, f"--signal={warn_signal}", "--full", job_id]]


class EnergyLimits:
    """Tracks limited jobs' energy on this node and signals them at their limit.

    Args:
        limit_dir: Where the per-job records live (created 0700).
        scancel_path: Absolute path of ``scancel``.
        policy: ``cancel`` or ``warn`` at 100 %.
        warn_fraction: Fraction of the limit at which the warning signal goes.
        warn_signal: Signal name for ``scancel --signal`` (``USR1``).
        registry: Where the counters go (the agent's).
    """

    def __init__(self, limit_dir: Path, scancel_path: str, *, policy: str = "cancel",
                 warn_fraction: float = 0.9, warn_signal: str = "USR1",
                 registry: CollectorRegistry | None = None) -> None:
        self.limit_dir = Path(limit_dir)
        self.scancel_path = scancel_path
        self.policy = policy
        self.warn_fraction = warn_fraction
        self.warn_signal = warn_signal
        self._records: dict[str, LimitRecord] = {}
        self._written_at: dict[str, float] = {}
        self._missing_since: dict[str, float] = {}
        # Energy of this node's jobs without a record, so a budget action can record it.
        self._seen_uj: dict[str, int] = {}
        # Budget actions from the pusher's thread, taken by the next observe(): job -> action.
        self._budget_lock = threading.Lock()
        self._budget_pending: dict[str, BudgetAction] = {}
        # Jobs the collector's latest answer named with a warning -> monotonic lease end.
        self._watch_leases: dict[str, float] = {}
        self._loaded = False
        #: A budget warned a job running here and has not yet cancelled it (module doc).
        self.watching = False
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.actions = Counter(
            "jobenergy_agent_energy_limit_actions",
            "Jobs signalled at their energy limit on this node, by action (warn: the warning "
            "signal; exceeded: limit reached under the warn policy; cancel: cancelled)",
            ["action"], registry=registry)
        self.scancel_failures = Counter(
            "jobenergy_agent_energy_limit_scancel_failures",
            "scancel runs for energy limits that failed (non-zero exit, timeout, not found)",
            registry=registry)
        self.budget_actions = Counter(
            "jobenergy_agent_budget_actions",
            "Of those, the actions a budget's running policy took (the collector's answer)",
            ["action"], registry=registry)
        self.budget_actions_ignored = Counter(
            "jobenergy_agent_budget_actions_ignored",
            "Budget actions not taken: not_running (the job is not in this node's map, or "
            "ended), invalid (the answer's entry failed the checks)",
            ["reason"], registry=registry)
        for action in ACTIONS:
            self.actions.labels(action)
            self.budget_actions.labels(action)
        for reason in ("not_running", "invalid"):
            self.budget_actions_ignored.labels(reason)

    # -- tracking ----------------------------------------------------------------------
    def observe(self, job_map: Mapping[str, JobMapEntry], interval: SampledInterval) -> None:
        """Add one sampled interval's energy to the limited jobs and act on their limits.

        Args:
            job_map: The hooks' job map at the interval's end (limits, node counts, ends).
            interval: The attributed interval.
        """
        if not self._loaded:
            self._load()
        now = time.monotonic()
        energy_uj: dict[str, int] = {}
        for src in interval.sources:
            for job_id, uj in src.jobs_uj.items():
                energy_uj[job_id] = energy_uj.get(job_id, 0) + uj
        missing = self._missing_since
        for job_id, entry in job_map.items():
            if missing:  # usually empty: no pop per job and sample
                missing.pop(job_id, None)
            record = self._records.get(job_id)
            if record is None and entry.energy_limit_uj is not None:
                record = self._records[job_id] = LimitRecord(
                    node_share_uj(entry.energy_limit_uj, entry.nodes),
                    energy_uj=self._seen_uj.pop(job_id, 0))
                logger.info("energy limit tracked job_id=%s limit_uj=%s node_share_uj=%s",
                            job_id, entry.energy_limit_uj, record.limit_uj)
            if record is None:
                self._seen_uj[job_id] = self._seen_uj.get(job_id, 0) + energy_uj.get(job_id, 0)
                continue
            record.energy_uj += energy_uj.get(job_id, 0)
            # After the epilog the job is over: nothing left to signal.
            acted = self._act(job_id, record) if entry.end_ns is None else False
            if acted or now - self._written_at.get(job_id, -1e18) >= _PERSIST_EVERY_S:
                self._write(job_id, record, now)
        self._take_budget_actions(job_map, now)
        self._watch(job_map)
        if self._records.keys() <= job_map.keys() and self._seen_uj.keys() <= job_map.keys():
            return  # every tracked job is still in the map (set tests in C, not a loop)
        for job_id in [j for j in (*self._records, *self._seen_uj) if j not in job_map]:
            since = self._missing_since.setdefault(job_id, now)
            if now - since >= _FORGET_AFTER_S:
                self._forget(job_id)

    def _watch(self, job_map: Mapping[str, JobMapEntry]) -> None:
        """Set :attr:`watching`: a job running here is warned by a budget, not yet past it,
        and the collector's answers still say so (its lease holds)."""
        watching = False
        leases = self._watch_leases  # replaced whole by budget_answer, never changed in place
        if leases:
            now = time.monotonic()
            for job_id, lease_end in leases.items():
                record = self._records.get(job_id)
                entry = job_map.get(job_id)
                if (lease_end > now and record is not None and record.budget_id is not None
                        and record.warned_uj is not None and record.exceeded_uj is None
                        and record.cancelled_uj is None and entry is not None
                        and entry.end_ns is None):
                    watching = True
                    break
        if watching != self.watching:
            logger.info("budget close watch %s: every sampled interval stored and pushed",
                        "on" if watching else "off")
            self.watching = watching

    def _act(self, job_id: str, record: LimitRecord) -> bool:
        """Take the actions due for ``record``; return True when one was taken."""
        if record.limit_uj is None or record.cancelled_uj is not None:
            return False  # no limit of its own; or cancelled (by a budget): nothing more
        due: list[str] = []
        # In integers: fraction in millionths, so a 1 GWh limit's threshold is exact too.
        warn_at_uj = record.limit_uj * round(self.warn_fraction * 1_000_000) // 1_000_000
        if record.warned_uj is None and record.energy_uj >= warn_at_uj:
            record.warned_uj = record.energy_uj
            due.append("warn")
        if record.energy_uj >= record.limit_uj:
            if self.policy == "cancel" and record.cancelled_uj is None:
                record.cancelled_uj = record.energy_uj
                due = ["cancel"]  # cancelling: a warning in the same breath helps nobody
            elif self.policy == "warn" and record.exceeded_uj is None:
                record.exceeded_uj = record.energy_uj
                due.append("exceeded")
        if due:
            record.budget_id = None  # the job's own limit took the latest action
        for action in due:
            logger.warning(
                "energy limit action=%s job_id=%s energy_uj=%s node_limit_uj=%s",
                action, job_id, record.energy_uj, record.limit_uj)
            self.actions.labels(action).inc()
            self._submit(job_id, action)
        return bool(due)

    # -- budgets (the collector's answers) ---------------------------------------------
    def budget_answer(self, body: bytes) -> None:
        """Queue the budget actions of a collector's answer to a batch (any thread)."""
        actions, problems = parse_budget_actions(body)
        for problem in problems:
            logger.warning("budget action refused: %s", problem)
        if problems:
            self.budget_actions_ignored.labels("invalid").inc(len(problems))
        lease_end = time.monotonic() + WATCH_LEASE_S
        with self._budget_lock:
            # Every answer names all of the batch's jobs a budget warns: one left out is no
            # longer warned (module doc, close watch).
            self._watch_leases = {a.job_id: lease_end for a in actions if a.action == "warn"}
            for action in actions:
                queued = self._budget_pending.get(action.job_id)
                if queued is None or _STRENGTH[action.action] >= _STRENGTH[queued.action]:
                    self._budget_pending[action.job_id] = action

    def _take_budget_actions(self, job_map: Mapping[str, JobMapEntry], now: float) -> None:
        """Take the queued budget actions of jobs running on this node; ignore the others."""
        if not self._budget_pending:  # read without the lock: a miss waits one interval
            return
        with self._budget_lock:
            pending, self._budget_pending = self._budget_pending, {}
        for job_id, action in sorted(pending.items()):
            entry = job_map.get(job_id)
            if entry is None or entry.end_ns is not None:
                logger.info("budget action ignored: job_id=%s is not running on this node "
                            "action=%s budget_id=%s", job_id, action.action, action.budget_id)
                self.budget_actions_ignored.labels("not_running").inc()
                continue
            record = self._records.get(job_id)
            if record is None:
                record = self._records[job_id] = LimitRecord(
                    energy_uj=self._seen_uj.pop(job_id, 0))
            if self._act_budget(job_id, record, action):
                self._write(job_id, record, now)

    def _act_budget(self, job_id: str, record: LimitRecord, action: BudgetAction) -> bool:
        """Take a budget's action unless the job had it (or a stronger one); True if taken."""
        energy = record.energy_uj
        if record.cancelled_uj is not None:
            return False
        if action.action == "cancel":
            record.cancelled_uj = energy
        elif action.action == "exceeded" and record.exceeded_uj is None:
            # One signal says both "nearly" and "reached": the 90 % one was never sent.
            record.warned_uj = energy if record.warned_uj is None else record.warned_uj
            record.exceeded_uj = energy
        elif action.action == "warn" and record.warned_uj is None:
            record.warned_uj = energy
        else:
            return False
        record.budget_id = action.budget_id
        logger.warning(
            "budget action=%s job_id=%s budget_id=%s used_inner=%s limit_inner=%s unit=%s "
            "energy_uj=%s", action.action, job_id, action.budget_id, action.used_inner,
            action.limit_inner, action.unit, energy)
        self.actions.labels(action.action).inc()
        self.budget_actions.labels(action.action).inc()
        self._submit(job_id, action.action)
        return True

    # -- records on disk ---------------------------------------------------------------
    def _load(self) -> None:
        """Read the records an earlier run of the agent left (restart: no signal again)."""
        self._loaded = True
        try:
            names = [p for p in self.limit_dir.iterdir() if SLURM_JOB_ID_RE.fullmatch(p.name)]
        except OSError:
            return
        for path in names:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    text = os.read(fd, 4096).decode("ascii", "replace")
                finally:
                    os.close(fd)
            except OSError:
                continue
            record = parse_record(text)
            if record is not None:
                self._records[path.name] = record
                logger.info("energy limit record resumed job_id=%s %s", path.name,
                            text.strip().replace("\n", " "))

    def _write(self, job_id: str, record: LimitRecord, now: float) -> None:
        """Write ``record`` atomically (temp file, rename); a failure is logged, not raised."""
        path = self.limit_dir / job_id
        tmp = self.limit_dir / f".{job_id}.tmp"
        try:
            self.limit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, record.text().encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._written_at[job_id] = now
        except OSError as err:
            logger.error("cannot write energy limit record path=%s err=%s", path, err)

    def _forget(self, job_id: str) -> None:
        self._seen_uj.pop(job_id, None)
        if self._records.pop(job_id, None) is None:
            self._missing_since.pop(job_id, None)
            return  # never had a record: no file
        self._written_at.pop(job_id, None)
        self._missing_since.pop(job_id, None)
        try:
            (self.limit_dir / job_id).unlink(missing_ok=True)
        except OSError as err:
            logger.debug("cannot remove energy limit record job_id=%s err=%s", job_id, err)

    # -- scancel -----------------------------------------------------------------------
    def _submit(self, job_id: str, action: str) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="jobenergy-limits",
                                            daemon=True)
            self._worker.start()
        self._queue.put((job_id, action))

    def _work(self) -> None:
        while True:
            job_id, action = self._queue.get()
            try:
                self.run_action(job_id, action)
            finally:
                self._queue.task_done()

    def run_action(self, job_id: str, action: str) -> bool:
        """Run the ``scancel`` commands of an action now; return True when all succeeded."""
        try:
            argvs = scancel_argvs(self.scancel_path, job_id, action, self.warn_signal)
        except ValueError as err:
            logger.error("energy limit not enforced: %s", err)
            self.scancel_failures.inc()
            return False
        ok = True
        for n, argv in enumerate(argvs):
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                      timeout=_SCANCEL_TIMEOUT_S, check=False,
                                      stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as err:
                logger.error("scancel failed job_id=%s argv=%s err=%s", job_id, argv, err)
                self.scancel_failures.inc()
                return False
            if proc.returncode != 0 and n > 0:
                # The plain scancel after a delivered TERM: the job often ended of the TERM.
                logger.info("scancel exited %s job_id=%s argv=%s stderr=%s", proc.returncode,
                            job_id, argv, proc.stderr.strip()[:300])
            elif proc.returncode != 0:
                logger.warning("scancel exited %s job_id=%s argv=%s stderr=%s",
                               proc.returncode, job_id, argv, proc.stderr.strip()[:300])
                self.scancel_failures.inc()
                ok = False
        return ok

    def wait_idle(self, timeout_s: float = 35.0) -> bool:
        """Wait until every queued ``scancel`` ran (shutdown, tests); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True
