"""A simulated compute node: the files the agent reads, and exact bookkeeping of them.

Layout under ``root`` (point the agent's roots at these):

* ``sys/class/powercap/intel-rapl:N`` (``package-N``) with a ``dram`` subzone and a ``core``
  subzone (which must never be added to the package), as on Intel servers;
* ``proc/stat``, ``proc/sys/kernel/random/boot_id``, ``proc/<pid>/{cgroup,environ}``;
* ``cgroup/{cpuacct,cpuset,devices}/slurm_<node>/uid_U/job_J/step_batch/task_0`` (cgroup v1 as
  Slurm 22.05 on Debian makes it), with parent usage that keeps what removed jobs used.

* ``nvml.state``: the simulated NVML's devices and processes (``sim/nvml``), when the node has
  GPUs; point ``JOBENERGY_NVML_SIM_STATE`` at it.

Each file is replaced atomically, and the node keeps the exact energy it added per source so
tests can derive the expected attribution from the scenario.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from jobenergy.sim.fs import write_atomic
from jobenergy.sim.nvml.state import SimDevice, SimProcess, SimState, write_state

USER_HZ = 100
NS_PER_TICK = 1_000_000_000 // USER_HZ
#: The kernel's range for a 61 µJ energy unit (same as the prometheus/procfs fixture).
RAPL_MAX_RANGE_UJ = 262_143_328_850


@dataclass
class SimJob:
    """A Slurm job as the node's cgroups show it."""

    job_id: str
    uid: int
    cpus: list[int]
    gpus: list[int] = field(default_factory=list)
    usage_ns: int = 0
    pid: int = 0
    # Live step cgroups → their usage, ns; a job's usage includes its ended steps' too.
    step_usage_ns: dict[str, int] = field(default_factory=lambda: {"batch": 0})


class SimNode:
    """Files of one simulated node.

    Args:
        root: Folder holding ``sys/``, ``proc/`` and ``cgroup/`` of this node.
        name: Node name (``slurm_<name>`` cgroup folder).
        ncpus: CPUs of the node.
        packages: RAPL packages (sockets).
        energy_start_uj: Initial RAPL counter value (set near the range to force a wrap).
        gpus: Simulated NVIDIA GPUs; minor number = index.
        gpu_name: Their product name.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        *,
        ncpus: int = 16,
        packages: int = 2,
        energy_start_uj: int = 0,
        gpus: int = 0,
        gpu_name: str = "NVIDIA H100 80GB HBM3",
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.ncpus = ncpus
        self.packages = packages
        self.sysfs_root = self.root / "sys"
        self.procfs_root = self.root / "proc"
        self.cgroup_root = self.root / "cgroup"
        self.counters_uj: dict[str, int] = {}
        self.added_uj: dict[str, int] = {}  # exact energy added per source since creation
        self.jobs: dict[str, SimJob] = {}
        self.root_usage_ns = 0
        self.busy_ns = 0
        self.idle_ns = 0
        self._next_pid = 1000
        for pkg in range(packages):
            for source in (f"package-{pkg}", f"package-{pkg}/dram"):
                self.counters_uj[source] = energy_start_uj % RAPL_MAX_RANGE_UJ
                self.added_uj[source] = 0
        self.nvml_state_path = self.root / "nvml.state"
        self.gpu_util: dict[str, float] = {}  # job id → SM utilisation 0..1 of its GPUs
        self.nvml = SimState(
            devices=[
                SimDevice(
                    index=i,
                    uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}.gpu{i}')}",
                    minor=i,
                    name=gpu_name,
                )
                for i in range(gpus)
            ]
        )
        for dev in self.nvml.devices:
            self.added_uj[f"gpu/{dev.uuid}"] = 0
        self._write_static()
        self._write_counters()
        self._write_stat()
        self._write_nvml()

    # -- paths ------------------------------------------------------------------------
    def _zone_dir(self, source: str) -> Path:
        base = self.sysfs_root / "class" / "powercap"
        pkg = int(source.split("/")[0].split("-")[1])
        return base / (f"intel-rapl:{pkg}:0" if source.endswith("/dram") else f"intel-rapl:{pkg}")

    def _cg(self, controller: str, *parts: str) -> Path:
        return self.cgroup_root.joinpath(controller, f"slurm_{self.name}", *parts)

    def _job_parts(self, job: SimJob) -> tuple[str, str]:
        return f"uid_{job.uid}", f"job_{job.job_id}"

    # -- static files -----------------------------------------------------------------
    def _write_static(self) -> None:
        base = self.sysfs_root / "class" / "powercap"
        write_atomic(base / "intel-rapl" / "enabled", "1\n")
        for pkg in range(self.packages):
            zones = {
                f"intel-rapl:{pkg}": f"package-{pkg}",
                f"intel-rapl:{pkg}:0": "dram",
                f"intel-rapl:{pkg}:1": "core",
            }
            for folder, zone_name in zones.items():
                write_atomic(base / folder / "name", zone_name + "\n")
                write_atomic(base / folder / "max_energy_range_uj", f"{RAPL_MAX_RANGE_UJ}\n")
                write_atomic(base / folder / "enabled", "1\n")
            write_atomic(base / f"intel-rapl:{pkg}:1" / "energy_uj", "12345\n")
        write_atomic(
            self.procfs_root / "sys" / "kernel" / "random" / "boot_id", f"{uuid.uuid4()}\n"
        )
        for controller in ("cpuacct", "cpuset", "devices"):
            self._cg(controller).mkdir(parents=True, exist_ok=True)
        write_atomic(self._cg("cpuset", "cpuset.cpus"), f"0-{self.ncpus - 1}\n")
        write_atomic(self._cg("cpuacct", "cpuacct.usage"), "0\n")

    def _write_counters(self) -> None:
        for source, value in self.counters_uj.items():
            write_atomic(self._zone_dir(source) / "energy_uj", f"{value}\n")

    def _write_stat(self) -> None:
        busy_ticks = self.busy_ns // NS_PER_TICK
        idle_ticks = self.idle_ns // NS_PER_TICK
        lines = [f"cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0"]
        for cpu in range(self.ncpus):
            lines.append(
                f"cpu{cpu} {busy_ticks // self.ncpus} 0 0 {idle_ticks // self.ncpus} 0 0 0 0 0 0"
            )
        lines += ["intr 0", "ctxt 0", "btime 1700000000", "processes 1", "procs_running 1"]
        write_atomic(self.procfs_root / "stat", "\n".join(lines) + "\n")

    # -- changes ----------------------------------------------------------------------
    def add_energy(self, source: str, energy_uj: int) -> None:
        """Advance one RAPL counter by ``energy_uj``, wrapping at the zone's range."""
        # The counter is taken modulo max_energy_range_uj, the model core.counters (and
        # Kepler) use: a drop means (max - prev) + cur. One wrap per interval at most.
        self.counters_uj[source] = (self.counters_uj[source] + energy_uj) % RAPL_MAX_RANGE_UJ
        self.added_uj[source] += energy_uj
        write_atomic(self._zone_dir(source) / "energy_uj", f"{self.counters_uj[source]}\n")

    def add_gpu_energy(self, index: int, energy_mj: int, power_mw: int | None = None) -> None:
        """Advance GPU ``index``'s NVML energy counter (mJ, NVML's unit)."""
        dev = self.nvml.devices[index]
        dev.energy_mj += energy_mj
        if power_mw is not None:
            dev.power_mw = power_mw
        self.added_uj[f"gpu/{dev.uuid}"] += energy_mj * 1000
        self._write_nvml()

    def _write_nvml(self) -> None:
        if not self.nvml.devices:
            return
        for dev in self.nvml.devices:
            dev.processes = [
                SimProcess(pid=job.pid, sm_util=int(100 * self.gpu_util.get(job.job_id, 0)))
                for job in self.jobs.values()
                if dev.minor in job.gpus
            ]
        write_state(self.nvml_state_path, self.nvml)

    def add_cpu_time(self, job_id: str | None, cpu_ns: int, wall_ns: int = 0) -> None:
        """Charge CPU time to a job's batch step (or to the node's own processes: None)."""
        self._add_cpu_time(job_id, "batch", cpu_ns, wall_ns)

    def add_step_cpu_time(self, job_id: str, step: str, cpu_ns: int, wall_ns: int = 0) -> None:
        """Charge CPU time to one step of a job (its ``step_<step>`` cgroup made if new)."""
        self._add_cpu_time(job_id, step, cpu_ns, wall_ns)

    def end_step(self, job_id: str, step: str) -> None:
        """Remove a step's cgroup; the job keeps its usage, as the kernel does."""
        job = self.jobs[job_id]
        job.step_usage_ns.pop(step)
        uid_dir, job_dir = self._job_parts(job)
        shutil.rmtree(self._cg("cpuacct", uid_dir, job_dir, f"step_{step}"), ignore_errors=True)

    def _add_cpu_time(self, job_id: str | None, step: str, cpu_ns: int, wall_ns: int) -> None:
        self.busy_ns += cpu_ns
        self.idle_ns += max(0, wall_ns * self.ncpus - cpu_ns)
        if job_id is not None:
            job = self.jobs[job_id]
            job.usage_ns += cpu_ns
            job.step_usage_ns[step] = job.step_usage_ns.get(step, 0) + cpu_ns
            self.root_usage_ns += cpu_ns
            self._write_job_usage(job)
            write_atomic(self._cg("cpuacct", "cpuacct.usage"), f"{self.root_usage_ns}\n")
        self._write_stat()

    def _write_job_usage(self, job: SimJob) -> None:
        uid_dir, job_dir = self._job_parts(job)
        write_atomic(self._cg("cpuacct", uid_dir, job_dir, "cpuacct.usage"), f"{job.usage_ns}\n")
        for step, usage_ns in job.step_usage_ns.items():
            for parts in ((f"step_{step}",), (f"step_{step}", "task_0")):
                write_atomic(
                    self._cg("cpuacct", uid_dir, job_dir, *parts, "cpuacct.usage"),
                    f"{usage_ns}\n",
                )
        uid_total = sum(j.usage_ns for j in self.jobs.values() if j.uid == job.uid)
        uid_file = self._cg("cpuacct", uid_dir, "cpuacct.usage")
        try:
            kept = int(uid_file.read_text())
        except (OSError, ValueError):
            kept = 0
        write_atomic(uid_file, f"{max(kept, uid_total)}\n")

    def start_job(
        self, job_id: str, uid: int, cpus: list[int], gpus: list[int] | None = None
    ) -> SimJob:
        """Create the job's cgroups (usage 0), a process with Slurm's environment."""
        job = SimJob(job_id, uid, list(cpus), list(gpus or []), pid=self._next_pid)
        self._next_pid += 1
        self.jobs[job_id] = job
        uid_dir, job_dir = self._job_parts(job)
        cpus_text = ",".join(str(c) for c in cpus)
        for parts in ((uid_dir, job_dir), (uid_dir, job_dir, "step_batch")):
            write_atomic(self._cg("cpuset", *parts, "cpuset.cpus"), cpus_text + "\n")
            write_atomic(self._cg("cpuset", *parts, "cgroup.procs"), f"{job.pid}\n")
        devices = "".join(f"c 195:{g} rwm\n" for g in job.gpus)
        write_atomic(self._cg("devices", uid_dir, job_dir, "devices.list"), devices)
        write_atomic(self._cg("devices", uid_dir, job_dir, "cgroup.procs"), f"{job.pid}\n")
        write_atomic(
            self._cg("cpuacct", uid_dir, job_dir, "step_batch", "task_0", "cgroup.procs"),
            f"{job.pid}\n",
        )
        write_atomic(self._cg("cpuacct", uid_dir, job_dir, "cgroup.procs"), f"{job.pid}\n")
        cg_path = f"/slurm_{self.name}/{uid_dir}/{job_dir}/step_batch/task_0"
        write_atomic(
            self.procfs_root / str(job.pid) / "cgroup",
            f"12:devices:{cg_path}\n4:cpuacct,cpu:{cg_path}\n3:cpuset:{cg_path}\n",
        )
        env = {"SLURM_JOB_ID": job_id, "SLURM_JOB_UID": str(uid)}
        if job.gpus:
            env["SLURM_JOB_GPUS"] = ",".join(str(g) for g in job.gpus)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(job.gpus)))
        write_atomic(
            self.procfs_root / str(job.pid) / "environ",
            "".join(f"{k}={v}\0" for k, v in env.items()),
        )
        self._write_job_usage(job)
        self._write_nvml()
        return job

    def job_dir(self, job_id: str, controller: str = "cpuacct") -> Path:
        """Return the job's cgroup folder under ``controller``."""
        return self._cg(controller, *self._job_parts(self.jobs[job_id]))

    def end_job(self, job_id: str) -> None:
        """Remove the job's cgroups and process; parents keep its usage, as the kernel does."""
        job = self.jobs.pop(job_id)
        uid_dir, job_dir = self._job_parts(job)
        for controller in ("cpuacct", "cpuset", "devices"):
            shutil.rmtree(self._cg(controller, uid_dir, job_dir), ignore_errors=True)
        shutil.rmtree(self.procfs_root / str(job.pid), ignore_errors=True)
        self.gpu_util.pop(job_id, None)
        self._write_nvml()
