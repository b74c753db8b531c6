"""The age walk with a full live table: what a read of the ages costs at 262,144 entries.

Run as root from the repository:  .venv/bin/python benchmarks/live_walk.py

Fills the live table with per-CPU array maps of 8-byte values (each element is one
percpu allocation, made after the programs attached, so each is a live entry) until it
holds --entries, then times, median of --reps:

- read: the batch lookups of the whole table (bpf(2), 4,096 entries a call), to bytes;
- walk: read and fold (per-site oldest age and bytes by age band, in Python);
- throttled read: everything the backend reads at most once per --min-read-interval
  (the walk, the site records, percpu_stats and meminfo, the breakdown);
- snapshot: BpfBackend.snapshot() when every call reads (min_read_interval 0), and when
  calls share a read (the daemon's default of 5 s: what the scrapes in between pay);
- scrape: the collector's whole exposition (generate_latest) on a shared read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends.bpf import BpfBackend
from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.maps import read_live
from pcpu_bpf.kernel.reader import read_kernel_stats
from pcpu_bpf.model.ages import AgeFold
from pcpu_bpf.model.layout import LIVE_ENTRY_FORMAT

MAP_ENTRIES = 16_384


def median_ms(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median and largest milliseconds of ``reps`` calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), max(times)


def fill(backend: BpfBackend, entries: int) -> list[int]:
    """Per-CPU array maps until the live table holds ``entries``; their fds."""
    fds: list[int] = []
    while True:
        maps = backend.snapshot().maps
        assert maps is not None
        live = maps["live"].entries
        if live >= entries:
            return fds
        n = min(MAP_ENTRIES, entries - live)
        fds.append(syscalls.create_percpu_array(8, n, "pcpu_walk_bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=262_144)
    ap.add_argument("--capacity", type=int, default=262_144, help="the live table's size")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    import struct

    entry = struct.calcsize(LIVE_ENTRY_FORMAT)
    with BpfBackend(live_capacity=args.capacity) as every:
        fds = fill(every, args.entries)
        try:
            fd = every.loaded_set.maps["pcpu_live"]
            maps = every.snapshot().maps
            assert maps is not None
            print(f"live entries: {maps['live'].entries} of {args.capacity}")
            dropped = every.snapshot().dropped
            print(f"dropped: {dict(dropped)}")

            def read() -> None:
                for _ in syscalls.lookup_batch_values(fd, 8, entry, args.capacity):
                    pass

            def walk() -> None:
                fold: AgeFold[int] = AgeFold(
                    time.clock_gettime_ns(time.CLOCK_BOOTTIME), per_second=1e9
                )
                fold.add(read_live(fd, args.capacity))

            loaded = every.loaded_set
            reader = read_kernel_stats
            rows = {
                "read (batch lookup)": median_ms(read, args.reps),
                "walk (read and fold)": median_ms(walk, args.reps),
                "kernel stats (percpu_stats, meminfo)": median_ms(reader, args.reps),
                "records and kernel stats of one moment (settled, retried)": median_ms(
                    lambda: every._read_settled(loaded), args.reps
                ),
                "throttled read (walk, records, percpu_stats, meminfo, breakdown)": median_ms(
                    every._read_slow, args.reps
                ),
                "snapshot, min_read_interval 0 (every call reads)": median_ms(
                    every.snapshot, args.reps
                ),
            }
            # The daemon's default: calls within 5 s share the read; the first pays it.
            every._slow.min_interval = 5.0
            every.snapshot()
            rows["snapshot, min_read_interval 5, within the interval"] = median_ms(
                every.snapshot, args.reps
            )
            registry = CollectorRegistry()
            registry.register(PcpuCollector(every.snapshot))
            rows["scrape (generate_latest), within the interval"] = median_ms(
                lambda: generate_latest(registry), args.reps
            )
        finally:
            for f in fds:
                syscalls.close(f)
    print(f"| at {args.entries} live entries (median of {args.reps}) | median | max |")
    print("| --- | ---: | ---: |")
    for what, (med, worst) in rows.items():
        print(f"| {what} | {med:.1f} ms | {worst:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
