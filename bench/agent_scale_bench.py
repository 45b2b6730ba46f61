"""Agent CPU per sample and RSS at 8, 32, 128 and 512 jobs per node, with and without GPUs.

Each configuration runs in a fresh interpreter (so RSS is the agent's, not an earlier run's),
``--repeat`` times; the table shows medians. One child:

* builds a simulated node (``jobenergy.sim.node.SimNode``, cgroup v1 as Slurm makes it) with
  N jobs (2 CPUs each), one prolog job-map file per job (``<id>``: GPUs, ``start=``), and,
  with ``--gpus 8``, 8 simulated NVIDIA GPUs (``jobenergy.sim.nvml``: the real pynvml over a
  compiled ``libnvidia-ml.so.1``; needs a C compiler), the first 8 jobs holding one each;
* runs the agent's :meth:`Agent.tick` in process on a simulated clock that moves 1 s per
  sample (``interval_s`` = 1: sealing every ``push_interval_s`` = 10 samples, coalescing
  every ``store_interval_s`` samples, learned idle floors, all as on a node), the pusher
  replaced by acknowledging the spooled batches (untimed);
* between samples (untimed), charges energy to every source and CPU time to every job: to
  its ``batch`` step, and with ``--steps 2`` to a step ``0`` too (an ``srun`` step); with
  ``--idle-every K`` each job is idle (no CPU time) at one sample in K, staggered;
* times each tick with ``time.process_time`` (the agent's CPU, whatever the machine's load
  does to wall time) after ``--warmup`` untimed ticks.

Printed per configuration: CPU ms per sample (mean over every tick, sealing included; p50 of
the ticks that do not seal), the process's RSS (VmRSS) and peak (VmHWM) at the end, and the
sampled vs stored intervals.

``--cgroupfs kernel`` puts the jobs' cgroups on this machine's own cgroup v1 mounts
(``/sys/fs/cgroup/cpuacct`` and ``cpuset``, ``slurm_<node>/uid_U/job_J/step_S`` as Slurm
makes them; needs root), so every CPU-time read is the kernel's: an open, read and close
there costs about twice a plain file's. Nothing runs in those cgroups, so the jobs' CPU time
stays 0 (the split by CPU time is the simulated rows' part). ``--keep-open no`` reads them
without keeping files open (``agent/cgroupfs.py``: KeptFiles), the comparison.

``--real`` also starts the real agent process (``jobenergy-agent``, as its systemd unit runs
it: ``jobenergy.sim.processes.start_agent``) on the node for ``--real-s`` seconds at
``interval_s`` = 0.2 (http:// collector, no /metrics, no annotation socket) and reports its
VmRSS.

    .venv/bin/python bench/agent_scale_bench.py [--jobs 8,32,128,512] [--gpus 0,8]
        [--samples 300] [--repeat 3] [--store-interval-s 10] [--steps 1] [--idle-every 0]
        [--cgroupfs sim|kernel] [--keep-open auto|no] [--real]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

_REAL_TIME = time


def _status_kb(key: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class _Clock:
    """A clock moving only when told (the agent's ``time`` and ``datetime.now``)."""

    def __init__(self) -> None:
        self.mono_ns = _REAL_TIME.monotonic_ns()
        self.wall_ns = _REAL_TIME.time_ns()

    def advance(self, ns: int) -> None:
        self.mono_ns += ns
        self.wall_ns += ns

    # the ``time`` functions the agent calls
    def monotonic_ns(self) -> int:
        return self.mono_ns

    def monotonic(self) -> float:
        return self.mono_ns / 1e9

    def time_ns(self) -> int:
        return self.wall_ns

    def time(self) -> float:
        return self.wall_ns / 1e9

    def sleep(self, seconds: float) -> None:
        self.advance(int(seconds * 1e9))

    def __getattr__(self, name: str):
        return getattr(_REAL_TIME, name)


def _install_clock(clock: _Clock) -> None:
    """Point the agent modules' ``time`` and ``datetime.now`` at ``clock``."""
    import importlib

    class _Datetime(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: D102 - datetime.now
            return datetime.fromtimestamp(clock.wall_ns / 1e9, tz)

    for name in ("sampler", "daemon", "gpu.attribution", "coalesce"):
        try:
            module = importlib.import_module(f"jobenergy.agent.{name}")
        except ImportError:
            continue
        if hasattr(module, "time"):
            module.time = clock
        if name == "sampler":
            module.datetime = _Datetime


def _charge(node, jobs: list[str], steps: list[str], n: int, idle_every: int) -> None:
    """Give every job (but the idle ones) CPU time in each of ``steps`` for sample ``n``.

    What ``SimNode.add_step_cpu_time`` does, with the node-wide files written once.
    """
    from jobenergy.sim.fs import write_atomic

    total = 0
    for i, job_id in enumerate(jobs):
        if idle_every and (n + i) % idle_every == 0:
            continue
        job = node.jobs[job_id]
        for k, step in enumerate(steps):
            cpu_ns = (900_000_000 if k == 0 else 700_000_000) + 1_000 * n + i
            job.usage_ns += cpu_ns
            job.step_usage_ns[step] = job.step_usage_ns.get(step, 0) + cpu_ns
            total += cpu_ns
        node._write_job_usage(job)
    node.root_usage_ns += total
    node.busy_ns += total
    node.idle_ns += max(0, node.ncpus * 1_000_000_000 - total)
    write_atomic(node._cg("cpuacct", "cpuacct.usage"), f"{node.root_usage_ns}\n")
    node._write_stat()


KERNEL_CGROUPS = Path("/sys/fs/cgroup")


def _remove_cgroups(top: Path) -> None:
    """Remove a cgroup tree (cgroupfs folders go with rmdir, deepest first)."""
    if top.exists():
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()),
                             key=lambda p: -len(p.parts)):
            folder.rmdir()
        top.rmdir()


def _kernel_job_cgroups(node: str, jobs: list[str], steps: list[str]) -> list[Path]:
    """Make the jobs' cgroups as Slurm's task/cgroup does (v1); return the tops to remove."""
    tops = [KERNEL_CGROUPS / controller / f"slurm_{node}" for controller in ("cpuacct", "cpuset")]
    for top in tops:
        _remove_cgroups(top)
    cpuset = tops[1]
    cpuset.mkdir()
    for name in ("cpuset.cpus", "cpuset.mems"):
        (cpuset / name).write_text((KERNEL_CGROUPS / "cpuset" / name).read_text())
    for i, job in enumerate(jobs):
        uid = f"uid_{2000 + i % 7}"
        for step in ("extern", *steps):
            (tops[0] / uid / f"job_{job}" / f"step_{step}").mkdir(parents=True, exist_ok=True)
        folder = cpuset / uid / f"job_{job}"
        folder.mkdir(parents=True, exist_ok=True)
        for level in (folder.parent, folder):  # a child's CPUs within its parent's
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (level / name).read_text().strip():
                    (level / name).write_text((cpuset / name).read_text())
        (folder / "cpuset.cpus").write_text(f"{i % (os.cpu_count() or 1)}\n")
    return tops


def child(args: argparse.Namespace) -> dict:
    """Run one configuration in this process; return its figures."""
    from jobenergy.sim.node import SimNode

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        env_state = None
        if args.gpus:
            from jobenergy.sim.nvml.build import build_libnvml, preload
            from jobenergy.sim.nvml.state import STATE_ENV

            preload(build_libnvml(tmp / "lib"))
            env_state = STATE_ENV
        node = SimNode(
            tmp / "node", "bench", ncpus=max(64, 2 * args.jobs), packages=args.packages,
            gpus=args.gpus,
        )
        if env_state:
            os.environ[env_state] = str(node.nvml_state_path)
        jobmap = tmp / "jobmap"
        jobmap.mkdir()
        start = time.time() - 60
        jobs = [str(1000 + i) for i in range(args.jobs)]
        for i, job in enumerate(jobs):
            gpus = [i] if i < args.gpus else []
            node.start_job(job, 2000 + i % 7, [2 * i, 2 * i + 1], gpus=gpus)
            if gpus:
                node.gpu_util[job] = 0.9
            (jobmap / job).write_text(
                ",".join(str(g) for g in gpus) + f"\nstart={start:.6f}\n"
            )
        node._write_nvml()

        from jobenergy.agent.cgroups import SlurmCgroups
        from jobenergy.agent.daemon import Agent
        from jobenergy.agent.settings import AgentSettings

        steps = ["batch", "0"][: args.steps]
        kernel_tops: list[Path] = []
        cgroup_root, node_name = node.cgroup_root, "bench"
        if args.cgroupfs == "kernel":
            node_name = f"jebench{os.getpid()}"
            kernel_tops = _kernel_job_cgroups(node_name, jobs, steps)
            cgroup_root = KERNEL_CGROUPS

        extra = {}
        if "store_interval_s" in AgentSettings.model_fields:
            extra["store_interval_s"] = args.store_interval_s
        settings = AgentSettings(
            collector_url="http://127.0.0.1:9", auth="none", cluster="bench", node=node_name,
            interval_s=1.0, push_interval_s=10.0, spool_dir=tmp / "spool",
            sysfs_root=node.sysfs_root, procfs_root=node.procfs_root,
            cgroup_root=cgroup_root, nvml="auto" if args.gpus else "off",
            annotation_socket="", gpu_map_dir=jobmap, **extra,
        )
        clock = _Clock()
        _install_clock(clock)
        agent = Agent(settings)
        if args.keep_open == "no":
            agent.sampler.cgroups = SlurmCgroups(cgroup_root, node=node_name, keep_open=False)
        stored = 0
        sealed_ticks: list[float] = []
        plain_ticks: list[float] = []
        for n in range(args.warmup + args.samples):
            _charge(node, jobs, steps, n, args.idle_every)  # the kernel's cgroups: unused
            for pkg in range(args.packages):
                node.add_energy(f"package-{pkg}", 50_000_000 + n)
                node.add_energy(f"package-{pkg}/dram", 5_000_000 + n)
            for g in range(args.gpus):
                node.nvml.devices[g].energy_mj += 400_000
            if args.gpus:
                node._write_nvml()
            clock.advance(1_000_000_000)
            before = len(agent.spool.pending())
            t0 = time.process_time()
            agent.tick()
            took = time.process_time() - t0
            pending = agent.spool.pending()
            if n >= args.warmup:
                (sealed_ticks if len(pending) > before else plain_ticks).append(took)
            for batch in pending:  # the pusher's acknowledgement, untimed
                if n >= args.warmup:
                    body = json.loads(__import__("gzip").decompress(batch.path.read_bytes()))
                    stored += len(body["intervals"])
                agent.spool.ack(batch)
        every = plain_ticks + sealed_ticks
        result = {
            "jobs": args.jobs,
            "gpus": args.gpus,
            "cpu_ms_mean": 1000 * sum(every) / len(every),
            "cpu_ms_p50_plain": 1000 * statistics.median(plain_ticks) if plain_ticks else 0.0,
            "cpu_ms_p50_seal": 1000 * statistics.median(sealed_ticks) if sealed_ticks else 0.0,
            "rss_mb": _status_kb("VmRSS") / 1024,
            "hwm_mb": _status_kb("VmHWM") / 1024,
            "sampled": args.samples,
            "stored": stored,
        }
        if agent.gpu is not None:
            agent.gpu.close()
        agent.pusher.close()
        kept = agent.sampler.cgroups._files
        result["kept_files"] = len(kept) if kept is not None else 0
        if kept is not None:
            kept.close()
        for top in kernel_tops:
            _remove_cgroups(top)
    return result


def real_rss(args: argparse.Namespace, jobs_n: int, gpus: int) -> float:
    """Return the VmRSS (MB) of a real agent process (``jobenergy-agent``) on a node of N jobs
    and ``gpus`` simulated GPUs (the compiled ``libnvidia-ml.so.1`` found through
    ``LD_LIBRARY_PATH``, as on a node)."""
    from jobenergy.sim.node import SimNode
    from jobenergy.sim.processes import start_agent, stop, write_agent_config

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        node = SimNode(tmp / "node", "bench", ncpus=max(64, 2 * jobs_n), packages=2, gpus=gpus)
        env = {"PYTHONPATH": os.pathsep.join(sys.path)}
        if gpus:
            from jobenergy.sim.nvml.build import build_libnvml
            from jobenergy.sim.nvml.state import STATE_ENV

            env["LD_LIBRARY_PATH"] = str(build_libnvml(tmp / "lib").parent)
            env[STATE_ENV] = str(node.nvml_state_path)
        jobmap = tmp / "jobmap"
        jobmap.mkdir()
        for i in range(jobs_n):
            held = [i] if i < gpus else []
            node.start_job(str(1000 + i), 2000, [2 * i, 2 * i + 1], gpus=held)
            (jobmap / str(1000 + i)).write_text(
                ",".join(map(str, held)) + f"\nstart={time.time():.6f}\n")
        node._write_nvml()
        cfg = write_agent_config(
            tmp / "agent.toml", collector_url="http://127.0.0.1:9", auth="none",
            cluster="bench", node="bench", interval_s=0.2, push_interval_s=1.0,
            spool_dir=str(tmp / "spool"), sysfs_root=str(node.sysfs_root),
            procfs_root=str(node.procfs_root), cgroup_root=str(node.cgroup_root),
            nvml="auto" if gpus else "off",
            gpu_map_dir=str(jobmap), annotation_socket="",
        )
        proc = start_agent(cfg, tmp / "agent.log", env=env)
        try:
            time.sleep(args.real_s)
            rss = _status_kb("VmRSS", str(proc.pid)) / 1024
        finally:
            stop(proc)
    return rss


def main() -> None:
    """Run every configuration ``--repeat`` times in fresh interpreters; print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="8,32,128,512")
    parser.add_argument("--gpus", default="0,8")
    parser.add_argument("--packages", type=int, default=2)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store-interval-s", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1, choices=(1, 2))
    parser.add_argument("--idle-every", type=int, default=0)
    parser.add_argument("--cgroupfs", choices=("sim", "kernel"), default="sim")
    parser.add_argument("--keep-open", choices=("auto", "no"), default="auto")
    parser.add_argument("--real", action="store_true", help="also the real agent's RSS")
    parser.add_argument("--real-s", type=float, default=8.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.jobs, args.gpus = int(args.jobs), int(args.gpus)
        print(json.dumps(child(args)))
        return
    print(
        f"agent CPU per sample (process_time) and RSS; {args.packages} RAPL packages + DRAM, "
        f"interval_s=1 (simulated clock), push_interval_s=10, store_interval_s="
        f"{args.store_interval_s}; {args.steps} busy step(s) per job"
        f"{f', each job idle one sample in {args.idle_every}' if args.idle_every else ''}; "
        f"{args.samples} timed samples after {args.warmup}; job cgroups: "
        f"{'the kernel cgroupfs' if args.cgroupfs == 'kernel' else 'simulated (plain files)'}"
        f"{', read without kept files' if args.keep_open == 'no' else ''}; "
        f"median of {args.repeat} fresh processes; load average at start "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (CPU time is the process's own, "
        "but a busy machine still slows it: repeat to check)"
    )
    print(f"{'jobs':>5} {'gpus':>4} {'ms/sample':>10} {'p50 plain':>10} {'p50 seal':>9} "
          f"{'RSS MB':>7} {'peak MB':>8} {'stored/sampled':>15} {'kept files':>10}")
    for jobs_n in [int(j) for j in args.jobs.split(",")]:
        for gpus in [int(g) for g in args.gpus.split(",")]:
            runs = []
            for _ in range(args.repeat):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--jobs", str(jobs_n), "--gpus",
                     str(gpus), "--samples", str(args.samples), "--warmup", str(args.warmup),
                     "--packages", str(args.packages),
                     "--store-interval-s", str(args.store_interval_s),
                     "--steps", str(args.steps), "--idle-every", str(args.idle_every),
                     "--cgroupfs", args.cgroupfs, "--keep-open", args.keep_open],
                    capture_output=True, text=True, check=False,
                )
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(out.returncode)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

            def med(key: str, runs: list[dict] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            print(
                f"{jobs_n:>5} {gpus:>4} {med('cpu_ms_mean'):>10.3f} "
                f"{med('cpu_ms_p50_plain'):>10.3f} {med('cpu_ms_p50_seal'):>9.3f} "
                f"{med('rss_mb'):>7.1f} {med('hwm_mb'):>8.1f} "
                f"{int(med('stored')):>7}/{int(med('sampled')):<7} {int(med('kept_files')):>10}",
                flush=True,
            )
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.real:
        for jobs_n in [int(j) for j in args.jobs.split(",")]:
            for gpus in [int(g) for g in args.gpus.split(",")]:
                rss = statistics.median(real_rss(args, jobs_n, gpus) for _ in range(args.repeat))
                print(f"real `jobenergy-agent` process, {jobs_n} jobs, {gpus} GPUs: VmRSS "
                      f"{rss:.1f} MB (after {args.real_s:.0f} s at interval_s=0.2)")


if __name__ == "__main__":
    main()
