"""Agent CPU time per sample on a simulated node with N jobs (target: ≤ 2 ms with 32 jobs).

Reads a simulated sysfs/proc/cgroup tree (tmpfs-like page cache, as real sysfs is in memory),
attributes and queues intervals; sealing to the spool is included at the configured push
interval. The agent runs on a simulated clock one second per sample (``interval_s`` = 1), so
sealing every ``push_interval_s`` and merging into stored intervals of ``store_interval_s``
happen as on a node. Prints figures; asserts nothing. See ``agent_scale_bench.py`` for
8..512 jobs, GPUs and RSS.

    python bench/agent_bench.py [--jobs 32] [--samples 2000] [--store-interval-s 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from agent_scale_bench import _Clock, _install_clock

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
    parser.add_argument("--store-interval-s", type=float, default=10.0)
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
            store_interval_s=args.store_interval_s,
        )
        clock = _Clock()
        _install_clock(clock)
        agent = Agent(settings)
        agent.tick()
        sample_s: list[float] = []  # ticks that only sample and attribute
        seal_s: list[float] = []  # ticks that also seal a batch to the spool
        for n in range(args.samples):
            for i in range(0, args.jobs, 8):
                node.add_cpu_time(str(1000 + i), 1_000_000 + n, 0)
            for pkg in range(args.packages):
                node.add_energy(f"package-{pkg}", 50_000_000 + n)
            clock.advance(1_000_000_000)
            before = len(agent.spool.pending())
            t0 = time.process_time()
            agent.tick()
            took = time.process_time() - t0
            sealing = len(agent.spool.pending()) > before
            (seal_s if sealing else sample_s).append(took)
            if sealing and not args.outage:
                for batch in agent.spool.pending():  # the pusher's ack, not timed
                    agent.spool.ack(batch)
        every = sorted(sample_s + seal_s)
        mean_ms = 1000 * sum(every) / len(every)
        print(
            f"agent CPU per sample, {args.jobs} jobs, {args.packages} packages (RAPL+DRAM), "
            f"{args.samples} samples{' (collector down)' if args.outage else ''}, "
            f"store_interval_s={args.store_interval_s}: "
            f"mean {mean_ms:.3f} ms incl. sealing a batch every 10 samples; "
            f"sample+attribute p50 {_pct(sample_s, 50):.3f} ms p99 {_pct(sample_s, 99):.3f} ms; "
            f"sealing tick p50 {_pct(seal_s, 50):.3f} ms"
        )
        print(f"= {mean_ms / 10:.3f} % of one core at 1 Hz")
        agent.pusher.close()


if __name__ == "__main__":
    main()
