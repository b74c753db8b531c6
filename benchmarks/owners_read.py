"""The cost of reading who holds percpu memory: BPF maps and cgroups, for docs/benchmarks.md.

Run as root from the repository:  .venv/bin/python benchmarks/owners_read.py

Adds N per-CPU array maps (one 8-byte entry each), N programs (socket filters, each
using one of the maps) and C cgroup v2 directories to what the host already has, then
times (wall and CPU), per size, the daemon's two readings: listing every BPF map with
its percpu bytes and owning programs (pcpu_bpf.backends.host_stats.bpf_map_owners), and
the cgroups' part (dying counts, memory.stat walk). Medians over the repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from pcpu_bpf.backends.host_stats import bpf_map_owners, cgroup_stats
from pcpu_bpf.bpf import syscalls
from pcpu_bpf.kernel import cgroups
from pcpu_bpf.kernel.procfs import read_possible_cpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bpf_progs import load_map_user  # noqa: E402  (the tests' raw program loader)


def median_ms(fn: Callable[[], object], reps: int) -> str:
    """Median wall and CPU milliseconds of ``fn`` (CPU: this process's, kernel included)."""
    wall, cpu = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return f"{statistics.median(wall) * 1000:.2f} ms ({statistics.median(cpu) * 1000:.2f} ms CPU)"


def count(what: str) -> int:
    return sum(1 for _ in (syscalls.map_ids() if what == "maps" else syscalls.prog_ids()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,100,1000,5000", help="maps (and programs) added")
    parser.add_argument("--cgroups", default="0,100,1000", help="cgroup directories added")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    possible, online = read_possible_cpus(), os.cpu_count() or 1
    unified, memory = cgroups.unified_root(), cgroups.v1_root("memory")
    print(f"host before: {count('maps')} maps, {count('progs')} programs")
    for n in (int(x) for x in args.sizes.split(",")):
        with ExitStack() as stack:
            fds = []
            for i in range(n):
                fds.append(syscalls.create_percpu_array(8, 1, f"bench{i}"))
                stack.callback(os.close, fds[-1])
            for i, fd in enumerate(fds):
                prog = load_map_user(f"bench{i}", [fd])
                stack.callback(os.close, prog)
            ms = median_ms(lambda: bpf_map_owners(possible, online, 20), args.reps)
            print(
                f"+{n} maps and programs ({count('maps')} maps, {count('progs')} programs): "
                f"BPF maps read {ms}"
            )
    assert unified is not None, "no cgroup v2"
    for n in (int(x) for x in args.cgroups.split(",")):
        made = [unified / f"pcpu-bench-{os.getpid()}-{i}" for i in range(n)]
        try:
            for path in made:
                path.mkdir()
            ms = median_ms(lambda: cgroup_stats(20, unified=unified, memory_v1=memory), args.reps)
            walked = sum(1 for _ in cgroups.walk(unified))
            print(f"+{n} cgroups ({walked} v2 cgroups): cgroups read {ms}")
        finally:
            for path in made:
                path.rmdir()


if __name__ == "__main__":
    main()
