"""Emulated energy hardware for real Slurm nodes that run on one host without RAPL or GPUs.

``python -m jobenergy.sim.hwemu --root DIR --nodes n1,n2,n3,n4``

For every node (a slurmd started with ``-N <node>``, whose jobs live in the real cgroup v1
tree ``<cgroup_root>/cpuacct/slurm_<node>/``) it writes, ``--hz`` times a second:

* ``DIR/<node>/sys/class/powercap/intel-rapl:0`` (``package-0``) and ``intel-rapl:0:0``
  (``dram``), in the layout of :mod:`jobenergy.sim.node` (point the agent's ``sysfs_root`` at
  ``DIR/<node>/sys``). The counters advance by a power model over real CPU activity::

      package W = cpu_idle_w + cpu_per_cpu_w × (node CPUs busy + host_other CPUs busy × share)
      dram W    = dram_idle_w + dram_per_cpu_w × node CPUs busy

  where "node CPUs busy" is the rate of ``cpuacct.usage`` of ``slurm_<node>`` (its jobs; the
  parent keeps the usage of removed jobs) and "host_other" is the busy time of the real
  ``/proc/stat`` not spent in any ``slurm_*`` cgroup; each node takes ``--host-share`` of
  it (default: shared evenly by the nodes).
* ``DIR/<node>/nvml.state``: the simulated NVML (:mod:`jobenergy.sim.nvml`) with ``--gpus``
  devices (minor = index, as ``File=/dev/nvidia[0-N]`` in gres.conf). A GPU's power is
  ``gpu_idle_w + util/100 × (gpu_max_w - gpu_idle_w)``; ``util`` is what the job's processes
  declare: a process in the node's job cgroups whose environment holds
  ``JOBENERGY_FAKE_GPU_UTIL=<percent>`` drives the GPUs of its ``SLURM_STEP_GPUS`` (else
  ``SLURM_JOB_GPUS``) and is listed as a compute process of them. Point the agent's NVML at
  the simulated library with ``JOBENERGY_NVML_SIM_STATE=DIR/<node>/nvml.state``.
* ``DIR/<node>/proc/``: the node's own procfs view (point the agent's ``procfs_root`` at it),
  since all nodes share the host's real ``/proc``, whose ``stat`` counts every node's jobs:

  - ``stat``: a ``cpu`` line and one ``cpuN`` line per host CPU (each node is configured with
    all of them), in ``USER_HZ`` ticks since the emulator started. Busy (``user``) is the CPU
    time of the node's job cgroups (``cpuacct.usage_percpu`` of ``slurm_<node>``) plus its
    share of the host's busy time outside Slurm (as in the power model), idle is elapsed
    wall time − busy, per CPU; both integer and never decreasing.
  - ``sys/kernel/random/boot_id``: the host's, copied.
  - ``<pid>`` → ``/proc/<pid>``: a symlink for every process in the node's job cgroups
    (``cgroup.procs`` under ``cpuacct`` and ``devices`` ``slurm_<node>/uid_*/job_*``), made
    before the NVML state lists the pid and removed once the pid left them, so the agent
    reads ``<pid>/environ`` and ``<pid>/cgroup`` there.
* The node's wall power, what its BMC reports (agent/reconcile.py)::

      wall W = package W + dram W + Σ GPU W + overhead_w

  ``overhead_w`` (``--overhead-w``) stands for what only the BMC sees: fans, NICs, disks,
  power-supply losses. Each tick hands it to ``wall_power(node, W)`` (a test binds
  ``IpmiSimBmc.set_power_w`` of :mod:`jobenergy.sim.bmc.ipmi`); with ``--bmc-power-files`` it
  is written, whole watts, to ``DIR/<node>/bmc/power_w``: the power file of
  ``IpmiSimBmc(DIR/<node>/bmc)``. While held the node stands still: 0 W.
* ``DIR/ledger.json``: the exact energy, integer µJ, added per node and source since start
  (``{"nodes": {"n1": {"package-0": ..., "package-0/dram": ..., "gpu/GPU-...": ...}}}``), so
  a test can check that Σ jobs + unattributed equals what the hardware produced;
  ``job_cpu_ns`` (node → job id → the last ``cpuacct.usage`` seen of the job's cgroup, ns);
  ``job_life_energy_uj`` (node → job id → the node's package + DRAM energy while the job's
  cgroup existed, µJ), ``job_life_gpu_uj`` (the same for the GPUs in its processes'
  ``SLURM_JOB_GPUS``), ``wall_uj`` (node → the exact wall energy, µJ: what a BMC would count)
  and ``job_life_s`` (node → job id → [birth, death] epoch seconds; death
  null while alive): an independent measure of what a job alone on its node should pay.
  Birth and death are the kernel's: the earliest ctime of the job's folder and its step
  folders when first seen (mkdir sets it), and its parent's ctime when first found gone
  (rmdir sets it); the middle of that tick when the parent changed again since.

While the file ``DIR/hold`` exists every counter stands still (the trees are still written):
a test holds the hardware while agents take their baseline sample and again before stopping
them, so the agents' measured energy equals the ledger exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobenergy.sim.fs import write_atomic
from jobenergy.sim.node import RAPL_MAX_RANGE_UJ
from jobenergy.sim.nvml.state import SimDevice, SimProcess, SimState, write_state

logger = logging.getLogger(__name__)

UTIL_ENV = b"JOBENERGY_FAKE_GPU_UTIL"
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (proc(5))


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Watts of the emulated parts (defaults: a small 2-socket-less server, one GPU type)."""

    cpu_idle_w: float = 20.0
    cpu_per_cpu_w: float = 15.0
    dram_idle_w: float = 3.0
    dram_per_cpu_w: float = 1.5
    gpu_idle_w: float = 60.0
    gpu_max_w: float = 400.0
    #: Fans, NICs, disks, PSU losses: in the wall power only (what a BMC adds to the counters).
    overhead_w: float = 0.0


def read_host_busy_ns(procfs_root: Path) -> int:
    """Return the host's busy CPU time (ns) from the ``cpu`` line of ``/proc/stat``."""
    with open(procfs_root / "stat", encoding="ascii") as f:
        first = f.readline().split()
    ticks = sum(int(first[1 + i]) for i in _BUSY_FIELDS if 1 + i < len(first))
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def host_cpu_ids(procfs_root: Path) -> list[int]:
    """Return the ids of the host's online CPUs (the ``cpuN`` lines of ``/proc/stat``)."""
    ids = []
    with open(procfs_root / "stat", encoding="ascii") as f:
        for line in f:
            head = line.split(maxsplit=1)[0] if line.strip() else ""
            if head.startswith("cpu") and head[3:].isdigit():
                ids.append(int(head[3:]))
    return ids


def _read_ints(path: Path) -> list[int] | None:
    try:
        return [int(v) for v in path.read_text().split()]
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return None


def gpu_uuid(node: str, index: int) -> str:
    """Return a stable, node-unique GPU UUID in NVML's ``GPU-8-4-4-4-12`` form."""
    h = hashlib.sha256(f"{node}/{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _environ(procfs_root: Path, pid: int) -> dict[bytes, bytes]:
    try:
        data = (procfs_root / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    return env


def _earliest_ctime(paths: list[Path]) -> float | None:
    """Return the earliest ctime of the paths that exist, wall s."""
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_ctime_ns / 1e9)
        except OSError:
            continue
    return min(times) if times else None


def _parse_ids(text: bytes) -> list[int]:
    ids = []
    for part in text.decode(errors="replace").split(","):
        lo, sep, hi = part.strip().partition("-")
        if lo.isdigit() and (not sep or hi.isdigit()):
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return ids


@dataclass
class EmulatedNode:
    """Counters and ledger of one node."""

    name: str
    root: Path
    gpus: int
    counters_uj: dict[str, int] = field(default_factory=dict)
    added_uj: dict[str, int] = field(default_factory=dict)
    carry: dict[str, float] = field(default_factory=dict)
    gpu_energy_mj: list[int] = field(default_factory=list)
    last_usage_ns: int | None = None
    cpu_ids: list[int] = field(default_factory=list)
    busy_ns: dict[int, int] = field(default_factory=dict)  # per CPU, since start
    last_percpu_ns: dict[int, int] = field(default_factory=dict)
    stat_ticks: dict[int, tuple[int, int]] = field(default_factory=dict)  # (busy, idle) written
    other_ns: int = 0  # the node's share of the host's non-Slurm busy time, since start
    linked_pids: set[int] = field(default_factory=set)
    job_cpu_ns: dict[str, int] = field(default_factory=dict)
    job_life_s: dict[str, list[float | None]] = field(default_factory=dict)  # [birth, death]
    job_life_uj: dict[str, float] = field(default_factory=dict)
    job_gpus: dict[str, list[int]] = field(default_factory=dict)  # SLURM_JOB_GPUS of a process
    job_dirs: dict[str, Path] = field(default_factory=dict)
    gpus_found: set[str] = field(default_factory=set)  # GPUs just learnt: back-charge from birth
    job_life_gpu_uj: dict[str, float] = field(default_factory=dict)
    wall_w: float = 0.0  # the wall power of the latest tick (0 while held)
    wall_uj: int = 0  # exact wall energy since start (fractions carried in ``carry``)

    def add_life_energy(
        self,
        live: dict[str, float],
        gone: dict[str, float],
        node_w: float,
        gpu_w: list[float],
        t0: float,
        t1: float,
        gpu_idle_w: float = 0.0,
    ) -> None:
        """Charge the node's package + DRAM power (and each job's GPUs') over ``[t0, t1]``.

        ``live`` maps the job cgroups present now to their birth (wall s); ``gone`` the jobs
        whose folder was removed to when (the parent's ctime). A job seen before and gone now
        died in this tick: at its removal time if that lies in the tick, else mid-tick.
        """
        for job, life in self.job_life_s.items():
            if life[1] is None and job not in live:
                died = gone.get(job)
                if died is None or not t0 <= died <= t1:
                    died = (t0 + t1) / 2
                life[1] = max(died, life[0] or 0.0)
                self._charge(job, life[0] or 0.0, life[1], node_w, gpu_w, t0)
        for job, born in live.items():
            if job not in self.job_life_s:
                self.job_life_s[job] = [born, None]
            self._charge(job, born, t1, node_w, gpu_w, t0)
            if job in self.gpus_found:
                # Its GPUs are learnt from its first process's SLURM_JOB_GPUS, a moment after
                # its birth; until then they were idle (no process to drive them).
                self.gpus_found.discard(job)
                idle_w = gpu_idle_w * len(self.job_gpus.get(job, ()))
                self.job_life_gpu_uj[job] = (
                    self.job_life_gpu_uj.get(job, 0.0) + idle_w * max(0.0, t0 - born) * 1e6
                )

    def _charge(
        self, job: str, born: float, until: float, node_w: float, gpu_w: list[float], t0: float
    ) -> None:
        lived_s = max(0.0, until - max(t0, born))
        self.job_life_uj[job] = self.job_life_uj.get(job, 0.0) + node_w * lived_s * 1e6
        gpus_w = sum(gpu_w[g] for g in self.job_gpus.get(job, ()))
        self.job_life_gpu_uj[job] = self.job_life_gpu_uj.get(job, 0.0) + gpus_w * lived_s * 1e6

    def __post_init__(self) -> None:
        base = self.root / "sys" / "class" / "powercap"
        write_atomic(base / "intel-rapl" / "enabled", "1\n")
        for folder, zone in (("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "dram")):
            write_atomic(base / folder / "name", zone + "\n")
            write_atomic(base / folder / "max_energy_range_uj", f"{RAPL_MAX_RANGE_UJ}\n")
            write_atomic(base / folder / "enabled", "1\n")
        for source in ("package-0", "package-0/dram"):
            self.counters_uj[source] = 0
            self.added_uj[source] = 0
        self.gpu_energy_mj = [0] * self.gpus
        for i in range(self.gpus):
            self.added_uj[f"gpu/{gpu_uuid(self.name, i)}"] = 0

    def _zone(self, source: str) -> Path:
        folder = "intel-rapl:0:0" if source.endswith("/dram") else "intel-rapl:0"
        return self.root / "sys" / "class" / "powercap" / folder / "energy_uj"

    def add(self, source: str, power_w: float, dt_s: float) -> None:
        """Advance a RAPL counter by ``power_w × dt_s`` (µJ, fractions carried over)."""
        exact = power_w * dt_s * 1e6 + self.carry.get(source, 0.0)
        energy_uj = int(exact)
        self.carry[source] = exact - energy_uj
        self.counters_uj[source] = (self.counters_uj[source] + energy_uj) % RAPL_MAX_RANGE_UJ
        self.added_uj[source] += energy_uj

    def add_wall(self, power_w: float, dt_s: float) -> None:
        """Add ``power_w × dt_s`` to the wall energy (µJ, fractions carried over)."""
        exact = power_w * dt_s * 1e6 + self.carry.get("wall", 0.0)
        energy_uj = int(exact)
        self.carry["wall"] = exact - energy_uj
        self.wall_uj += energy_uj

    def add_gpu(self, index: int, power_w: float, dt_s: float) -> None:
        """Advance a GPU's total energy (mJ, NVML's unit; fractions carried over)."""
        key = f"gpu{index}"
        exact = power_w * dt_s * 1e3 + self.carry.get(key, 0.0)
        energy_mj = int(exact)
        self.carry[key] = exact - energy_mj
        self.gpu_energy_mj[index] += energy_mj
        self.added_uj[f"gpu/{gpu_uuid(self.name, index)}"] += energy_mj * 1000

    def write_counters(self) -> None:
        """Write the RAPL counters' current values."""
        for source, value in self.counters_uj.items():
            write_atomic(self._zone(source), f"{value}\n")

    @property
    def proc(self) -> Path:
        """The node's procfs view."""
        return self.root / "proc"

    def add_cpu_usage(self, percpu_ns: list[int] | None) -> None:
        """Add the growth of ``slurm_<node>``'s per-CPU usage (a drop is a new cgroup: rebase)."""
        for cpu in self.cpu_ids:
            now = percpu_ns[cpu] if percpu_ns is not None and cpu < len(percpu_ns) else None
            if now is None:
                continue
            last = self.last_percpu_ns.get(cpu)
            if last is not None and now >= last:
                self.busy_ns[cpu] = self.busy_ns.get(cpu, 0) + now - last
            self.last_percpu_ns[cpu] = now

    def add_other_busy(self, cpus: float, dt_s: float) -> None:
        """Add the node's share of the host's busy time outside any Slurm job (system)."""
        self.other_ns += int(cpus * dt_s * 1e9)

    def write_stat(self, elapsed_s: float, hz: int) -> None:
        """Write ``proc/stat``: per CPU busy and idle ticks, never decreasing.

        Busy (the ``user`` column) is the node's jobs plus its share of the host's other busy
        time, the same two terms its package power follows: a node whose power rises shows
        the CPU time that explains it, as a real one does.
        """
        wall_ticks = int(elapsed_s * hz)
        lines = []
        total_busy = total_idle = 0
        other_per_cpu_ns = self.other_ns // max(1, len(self.cpu_ids))
        for cpu in self.cpu_ids:
            old_busy, old_idle = self.stat_ticks.get(cpu, (0, 0))
            own_ns = self.busy_ns.get(cpu, 0) + other_per_cpu_ns
            busy = max(old_busy, min(wall_ticks, own_ns * hz // 1_000_000_000))
            idle = max(old_idle, wall_ticks - busy)
            self.stat_ticks[cpu] = (busy, idle)
            total_busy += busy
            total_idle += idle
            lines.append(f"cpu{cpu} {busy} 0 0 {idle} 0 0 0 0 0 0")
        head = f"cpu  {total_busy} 0 0 {total_idle} 0 0 0 0 0 0"
        write_atomic(self.proc / "stat", "\n".join([head, *lines]) + "\n")

    def link_pids(self, pids: set[int], procfs_root: Path) -> None:
        """Make ``proc/<pid>`` → ``<procfs_root>/<pid>`` for exactly ``pids``."""
        for pid in self.linked_pids - pids:
            try:
                (self.proc / str(pid)).unlink()
            except FileNotFoundError:
                pass
        for pid in pids - self.linked_pids:
            link = self.proc / str(pid)
            try:
                link.symlink_to(procfs_root / str(pid))
            except FileExistsError:
                if not link.is_symlink():
                    raise
        self.linked_pids = set(pids)


class HardwareEmulator:
    """Power model over real CPU activity, writing powercap trees and NVML state per node.

    Args:
        root: Output folder (``<root>/<node>/sys``, ``<root>/<node>/nvml.state``, ledger).
        nodes: Node names (``slurm_<node>`` cgroups).
        gpus: GPUs per node.
        cgroup_root: Where the cgroup v1 controllers are mounted.
        procfs_root: Where procfs is mounted.
        model: Power model.
        host_share: Each node's share of the host's busy time outside Slurm.
        wall_power: Called every tick with each node's wall power, W (module docstring).
        bmc_power_files: Also write it, whole watts, to ``<root>/<node>/bmc/power_w``.
    """

    def __init__(
        self,
        root: str | Path,
        nodes: list[str],
        *,
        gpus: int = 2,
        cgroup_root: str | Path = "/sys/fs/cgroup",
        procfs_root: str | Path = "/proc",
        model: PowerModel | None = None,
        host_share: float | None = None,
        wall_power: Callable[[str, float], None] | None = None,
        bmc_power_files: bool = False,
    ) -> None:
        self.root = Path(root)
        self.wall_power = wall_power
        self.bmc_power_files = bmc_power_files
        # Each node's share of the host's busy time outside Slurm (its "OS activity").
        self.host_share = 1 / max(1, len(nodes)) if host_share is None else host_share
        self.cgroup_root = Path(cgroup_root)
        self.procfs_root = Path(procfs_root)
        self.model = model or PowerModel()
        self.nodes = [EmulatedNode(n, self.root / n, gpus) for n in nodes]
        self.hz_user = os.sysconf("SC_CLK_TCK")
        cpu_ids = host_cpu_ids(self.procfs_root)
        boot_id = (self.procfs_root / "sys" / "kernel" / "random" / "boot_id").read_text()
        for node in self.nodes:
            node.cpu_ids = list(cpu_ids)
            write_atomic(node.proc / "sys" / "kernel" / "random" / "boot_id", boot_id)
            node.proc.mkdir(parents=True, exist_ok=True)
            for entry in node.proc.iterdir():  # links left by an earlier run
                if entry.name.isdigit() and entry.is_symlink():
                    entry.unlink()
        self._start_mono = time.monotonic()
        self.hold_path = self.root / "hold"
        self.ledger_path = self.root / "ledger.json"
        self._last_mono: float | None = None
        self._last_wall: float = time.time()
        self._last_host_busy_ns: int | None = None
        self._last_all_slurm_ns: int | None = None
        self.ticks = 0

    def _slurm_usage_ns(self, node: str) -> int | None:
        return _read_int(self.cgroup_root / "cpuacct" / f"slurm_{node}" / "cpuacct.usage")

    def _all_slurm_ns(self) -> int:
        total = 0
        for path in (self.cgroup_root / "cpuacct").glob("slurm*/cpuacct.usage"):
            total += _read_int(path) or 0
        return total

    def _job_pids(
        self, node: str, controllers: tuple[str, ...] = ("cpuacct",)
    ) -> dict[int, str]:
        """Return pid → job id for every process in the node's job cgroups."""
        pids: dict[int, str] = {}
        for controller in controllers:
            base = self.cgroup_root / controller / f"slurm_{node}"
            try:
                found = list(base.glob("uid_*/job_*/**/cgroup.procs"))
            except OSError:  # a job folder removed while walked: its processes are gone too
                found = list(base.glob("uid_*/job_*/cgroup.procs"))
            for procs in found:
                job = procs.relative_to(base).parts[1].removeprefix("job_")
                try:
                    pids.update((int(p), job) for p in procs.read_text().split())
                except (OSError, ValueError):
                    continue
        return pids

    def _job_cpu(self, node: EmulatedNode) -> tuple[dict[str, float], dict[str, float]]:
        """Record each job's CPU time; return the live jobs with their birth and the jobs
        gone since the last tick with their removal (wall s, from the kernel's ctimes)."""
        base = self.cgroup_root / "cpuacct" / f"slurm_{node.name}"
        live: dict[str, float] = {}
        for usage in base.glob("uid_*/job_*/cpuacct.usage"):
            value = _read_int(usage)
            job = usage.parent.name.removeprefix("job_")
            if value is not None and value >= node.job_cpu_ns.get(job, 0):
                node.job_cpu_ns[job] = value
            life = node.job_life_s.get(job)
            if life is not None and life[1] is None:
                live[job] = life[0] or 0.0
                continue
            born = _earliest_ctime([usage.parent, *usage.parent.glob("step_*")])
            if born is not None:
                live[job] = born
                node.job_dirs[job] = usage.parent
        gone: dict[str, float] = {}
        for job, life in node.job_life_s.items():
            if life[1] is None and job not in live and job in node.job_dirs:
                parent = node.job_dirs[job].parent
                died = _earliest_ctime([parent]) if parent.exists() else None
                gone[job] = died if died is not None else (_earliest_ctime([base]) or 0.0)
        return live, gone

    def _update_proc(
        self, node: EmulatedNode, now: float
    ) -> tuple[dict[int, str], tuple[dict[str, float], dict[str, float]]]:
        """Write the node's ``proc/stat`` and its pid links; return its job pids and jobs."""
        base = self.cgroup_root / "cpuacct" / f"slurm_{node.name}"
        node.add_cpu_usage(_read_ints(base / "cpuacct.usage_percpu"))
        node.write_stat(now - self._start_mono, self.hz_user)
        pids = self._job_pids(node.name, ("cpuacct", "devices"))
        node.link_pids(set(pids), self.procfs_root)
        return pids, self._job_cpu(node)

    def _gpu_util(
        self, node: EmulatedNode, pids: dict[int, str]
    ) -> tuple[list[int], dict[int, list[SimProcess]]]:
        util = [0] * node.gpus
        procs: dict[int, list[SimProcess]] = {i: [] for i in range(node.gpus)}
        for pid in sorted(pids):  # linked under the node's proc/ before NVML lists them
            env = _environ(self.procfs_root, pid)
            held = env.get(b"SLURM_JOB_GPUS")
            if held is not None and pids[pid] not in node.job_gpus:
                node.job_gpus[pids[pid]] = [g for g in _parse_ids(held) if 0 <= g < node.gpus]
                node.gpus_found.add(pids[pid])
            wanted = env.get(UTIL_ENV)
            if wanted is None:
                continue
            try:
                percent = max(0, min(100, int(wanted)))
            except ValueError:
                continue
            ids = env.get(b"SLURM_STEP_GPUS") or env.get(b"SLURM_JOB_GPUS") or b""
            for gpu in _parse_ids(ids):
                if 0 <= gpu < node.gpus:
                    util[gpu] = max(util[gpu], percent)
                    procs[gpu].append(SimProcess(pid=pid, sm_util=percent, mem_util=percent // 4))
        return util, procs

    def tick(self) -> None:
        """Advance every counter by the power of the time since the last tick and write."""
        now = time.monotonic()
        now_wall = time.time()
        host_busy = read_host_busy_ns(self.procfs_root)
        all_slurm = self._all_slurm_ns()
        held = self.hold_path.exists()
        dt_s = 0.0 if self._last_mono is None else now - self._last_mono
        other_cpus = 0.0
        if dt_s > 0 and self._last_host_busy_ns is not None and self._last_all_slurm_ns is not None:
            other_ns = (host_busy - self._last_host_busy_ns) - (all_slurm - self._last_all_slurm_ns)
            other_cpus = max(0.0, other_ns / 1e9 / dt_s) * self.host_share
        m = self.model
        for node in self.nodes:
            usage = self._slurm_usage_ns(node.name) or 0
            if node.last_usage_ns is None or usage < node.last_usage_ns:
                node.last_usage_ns = usage
            busy = (usage - node.last_usage_ns) / 1e9 / dt_s if dt_s > 0 else 0.0
            node.last_usage_ns = usage
            if dt_s > 0 and not held:
                node.add_other_busy(other_cpus, dt_s)
            pids, (live, gone) = self._update_proc(node, now)
            util, procs = self._gpu_util(node, pids)
            gpu_w = [m.gpu_idle_w + u / 100 * (m.gpu_max_w - m.gpu_idle_w) for u in util]
            if dt_s > 0 and not held:
                pkg_w = m.cpu_idle_w + m.cpu_per_cpu_w * (busy + other_cpus)
                dram_w = m.dram_idle_w + m.dram_per_cpu_w * busy
                node.add("package-0", pkg_w, dt_s)
                node.add("package-0/dram", dram_w, dt_s)
                for i in range(node.gpus):
                    node.add_gpu(i, gpu_w[i], dt_s)
                node.wall_w = pkg_w + dram_w + sum(gpu_w) + m.overhead_w
                node.add_wall(node.wall_w, dt_s)
                node.add_life_energy(
                    live, gone, pkg_w + dram_w, gpu_w, self._last_wall, now_wall, m.gpu_idle_w
                )
            else:
                node.wall_w = 0.0  # held (or the first tick): the node draws nothing yet
                node.add_life_energy(
                    live, gone, 0.0, [0.0] * node.gpus, self._last_wall, now_wall
                )
            self._report_wall(node)
            node.write_counters()
            devices = [
                SimDevice(
                    index=i,
                    uuid=gpu_uuid(node.name, i),
                    minor=i,
                    name="NVIDIA H100 80GB HBM3 (emulated)",
                    energy_mj=node.gpu_energy_mj[i],
                    power_mw=round(
                        1000 * (m.gpu_idle_w + util[i] / 100 * (m.gpu_max_w - m.gpu_idle_w))
                    ),
                    processes=procs[i],
                )
                for i in range(node.gpus)
            ]
            write_state(node.root / "nvml.state", SimState(devices=devices))
        self._last_mono = now
        self._last_wall = now_wall
        self._last_host_busy_ns = host_busy
        self._last_all_slurm_ns = all_slurm
        self.ticks += 1

    def _report_wall(self, node: EmulatedNode) -> None:
        """Hand the node's wall power to its BMC: the callback, the power file, or both."""
        if self.wall_power is not None:
            self.wall_power(node.name, node.wall_w)
        if self.bmc_power_files:  # DCMI reports whole watts
            write_atomic(node.root / "bmc" / "power_w", f"{round(node.wall_w)}\n")

    def write_ledger(self) -> None:
        """Write the exact energy added per node and source (integer µJ)."""
        data = {
            "ticks": self.ticks,
            "held": self.hold_path.exists(),
            "model": asdict(self.model),
            "nodes": {n.name: dict(n.added_uj) for n in self.nodes},
            "job_cpu_ns": {n.name: dict(n.job_cpu_ns) for n in self.nodes},
            "job_life_energy_uj": {
                n.name: {j: int(e) for j, e in n.job_life_uj.items()} for n in self.nodes
            },
            "job_life_s": {n.name: dict(n.job_life_s) for n in self.nodes},
            "job_life_gpu_uj": {
                n.name: {j: int(e) for j, e in n.job_life_gpu_uj.items()} for n in self.nodes
            },
            "wall_uj": {n.name: n.wall_uj for n in self.nodes},
        }
        write_atomic(self.ledger_path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def run(self, stop: threading.Event, hz: float = 10.0) -> None:
        """Tick ``hz`` times a second until ``stop`` is set; the ledger is written each tick."""
        period = 1.0 / hz
        next_t = time.monotonic()
        while not stop.is_set():
            try:
                self.tick()
                self.write_ledger()
            except OSError:  # a cgroup or /proc entry vanished mid-read: next tick
                logger.exception("tick failed")
            next_t += period
            stop.wait(max(0.0, next_t - time.monotonic()))
        self.write_ledger()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m jobenergy.sim.hwemu --root DIR --nodes n1,n2``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--nodes", required=True, help="comma-separated node names")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs per node")
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--cgroup-root", type=Path, default=Path("/sys/fs/cgroup"))
    parser.add_argument("--procfs-root", type=Path, default=Path("/proc"))
    parser.add_argument("--hold", action="store_true", help="start held (create ROOT/hold)")
    parser.add_argument("--host-share", type=float, default=None,
                        help="each node's share of the host's non-Slurm busy time "
                             "(default 1/nodes)")
    parser.add_argument("--overhead-w", type=float, default=0.0,
                        help="wall power beyond the counters (fans, PSU losses), W")
    parser.add_argument("--bmc-power-files", action="store_true",
                        help="write each node's wall power to ROOT/<node>/bmc/power_w")
    parser.add_argument("--nice", type=int, default=0,
                        help="priority change (root: negative keeps the 'hardware' on time)")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hwemu %(levelname)s %(message)s")
    args.root.mkdir(parents=True, exist_ok=True)
    if args.hold:
        (args.root / "hold").touch()
    emu = HardwareEmulator(
        args.root,
        [n for n in args.nodes.split(",") if n],
        gpus=args.gpus,
        cgroup_root=args.cgroup_root,
        procfs_root=args.procfs_root,
        host_share=args.host_share,
        model=PowerModel(overhead_w=args.overhead_w),
        bmc_power_files=args.bmc_power_files,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    emu.tick()
    emu.write_ledger()
    (args.root / "ready").touch()
    emu.run(stop, args.hz)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
