"""Simulator throughput next to the live kernel's, in one run (docs/benchmarks.md).

    sudo .venv/bin/python benchmarks/sim_throughput.py [--ops 100000] [--repeat 5]

Simulator: events per second on one core for a mixed scenario, the allocator alone and
with the reference aggregator listening (what the sim backend runs). Kernel: the same
number of allocations and frees driven through per-CPU BPF array maps (N entries = N
percpu allocations; closing the map frees them from a kworker), timed until
percpu_stats shows the frees. Medians over the repetitions; the kernel part needs root.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.model.events import Event
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.scenarios import SCENARIOS, Workload
from pcpu_bpf.sim.simulation import Simulation


def allocator_alone(scenario: str, ops: int, seed: int) -> float:
    """Events/s of the allocator model driven by the scenario, events only counted."""
    count = 0

    def sink(_: Event) -> None:
        nonlocal count
        count += 1

    sc = SCENARIOS[scenario]
    steps = sc.run(Workload(Allocator(balance=sc.balance, sink=sink), random.Random(seed)))
    start = time.perf_counter()
    for _ in range(ops):
        next(steps)
    return count / (time.perf_counter() - start)


def with_aggregator(scenario: str, ops: int, seed: int) -> float:
    """Events/s of the whole sim backend pipeline: allocator, aggregator, symbolizer."""
    sim = Simulation(scenario, seed)
    start = time.perf_counter()
    sim.advance(ops)
    sim.snapshot(0.0)
    return sim.events / (time.perf_counter() - start)


def kernel(n: int, value_size: int = 8) -> float:
    """Events/s of the live kernel for n allocations and n frees through a per-CPU map."""
    from pcpu_bpf.bpf.syscalls import create_percpu_array

    before = read_percpu_stats().globals.nr_dealloc
    start = time.perf_counter()
    fd = create_percpu_array(value_size, n)
    os.close(fd)
    deadline = start + 30
    while read_percpu_stats().globals.nr_dealloc < before + n:
        if time.perf_counter() > deadline:
            raise SystemExit("kernel frees did not show up in percpu_stats within 30 s")
        time.sleep(0.001)
    return 2 * n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scenario", default="netns-churn", choices=list(SCENARIOS))
    args = ap.parse_args()
    results: dict[str, list[float]] = {"allocator": [], "sim backend": [], "kernel": []}
    for seed in range(args.repeat):
        results["allocator"].append(allocator_alone(args.scenario, args.ops, seed))
        results["sim backend"].append(with_aggregator(args.scenario, args.ops, seed))
        if os.geteuid() == 0:
            # About one event per op: the same number of allocations and frees.
            results["kernel"].append(kernel(args.ops // 2))
    base = statistics.median(results["allocator"])
    print(f"scenario {args.scenario}, {args.ops} ops, median of {args.repeat}")
    for name, rates in results.items():
        if rates:
            med = statistics.median(rates)
            print(f"  {name:<12} {med:>12,.0f} events/s   ({med / base:.2f}x allocator)")
        else:
            print(f"  {name:<12} (needs root)")


if __name__ == "__main__":
    main()
