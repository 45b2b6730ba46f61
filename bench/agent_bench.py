"""Agent CPU time per sample on a simulated node with N jobs (target: ≤ 2 ms with 32 jobs).

Reads a simulated sysfs/proc/cgroup tree (tmpfs-like page cache, as real sysfs is in memory),
attributes and queues intervals; sealing to the spool is included at the configured push
interval. Prints figures; asserts nothing.

    python bench/agent_bench.py [--jobs 32] [--samples 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from jobenergy.agent.daemon import Agent
from jobenergy.agent.settings import AgentSettings
from jobenergy.sim.node import SimNode


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, len(ordered) * pct // 100)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--packages", type=int, default=2)
    parser.add_argument(
        "--outage", action="store_true", help="collector down: batches pile up in the spool"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        node = SimNode(root / "node", "bench", ncpus=max(64, args.jobs * 2), packages=args.packages)
        for i in range(args.jobs):
            node.start_job(str(1000 + i), 2000 + i % 7, [2 * i, 2 * i + 1])
        settings = AgentSettings(
            collector_url="http://127.0.0.1:9", auth="none",
            cluster="bench",
            node="bench",
            interval_s=1.0,
            push_interval_s=10.0,
            spool_dir=root / "spool",
            sysfs_root=node.sysfs_root,
            procfs_root=node.procfs_root,
            cgroup_root=node.cgroup_root,
            nvml="off",
            annotation_socket="",
            gpu_map_dir=root / "jobmap",
        )
        agent = Agent(settings)
        agent.tick()
        sample_s: list[float] = []  # ticks that only sample and attribute
        seal_s: list[float] = []  # ticks that also seal a batch to the spool
        for n in range(args.samples):
            for i in range(0, args.jobs, 8):
                node.add_cpu_time(str(1000 + i), 1_000_000 + n, 0)
            for pkg in range(args.packages):
                node.add_energy(f"package-{pkg}", 50_000_000 + n)
            sealing = n % 10 == 9
            if sealing:
                agent._last_seal_mono_ns = 0  # seal every 10 samples (push_interval_s at 1 Hz)
            t0 = time.process_time()
            agent.tick()
            (seal_s if sealing else sample_s).append(time.process_time() - t0)
            if sealing and not args.outage:
                for batch in agent.spool.pending():  # the pusher's ack, not timed
                    agent.spool.ack(batch)
        every = sorted(sample_s + seal_s)
        mean_ms = 1000 * sum(every) / len(every)
        print(
            f"agent CPU per sample, {args.jobs} jobs, {args.packages} packages (RAPL+DRAM), "
            f"{args.samples} samples{' (collector down)' if args.outage else ''}: "
            f"mean {mean_ms:.3f} ms incl. sealing a batch every 10 samples; "
            f"sample+attribute p50 {_pct(sample_s, 50):.3f} ms p99 {_pct(sample_s, 99):.3f} ms; "
            f"sealing tick p50 {_pct(seal_s, 50):.3f} ms"
        )
        print(f"= {mean_ms / 10:.3f} % of one core at 1 Hz")
        agent.pusher.close()


if __name__ == "__main__":
    main()
