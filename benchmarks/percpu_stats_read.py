"""What reading debugfs percpu_stats costs the kernel, and what the daemon's throttle saves.

The kernel builds percpu_stats (mm/percpu-stats.c percpu_stats_show) by walking every
chunk's allocation map under pcpu_lock with interrupts off, so the read grows with the
number of live percpu allocations and holds off every percpu allocation meanwhile.

1. Read cost: live allocations are raised to each --live count with per-CPU BPF array
   maps (one map of N 8-byte entries = N percpu allocations); percpu_stats is read
   --reads times at each count, median and max quoted.
2. Impact: at the largest count, a workload creates and closes a per-CPU array of
   --map-entries entries in a loop for --duration seconds (each create is that many
   percpu allocations) and runs `unshare -n true` --netns times, first alone, then while
   --scrapers threads in another process scrape at --scrape-rate per second in all,
   reading percpu_stats directly (--interval 0: no throttle) or through the daemon's
   SharedRead with each --interval. With --via-daemon the scrapers GET /metrics of a
   real `pcpu-bpf serve` (bpf backend, attached) started with --min-read-interval
   each --interval instead: BPF map reads, rendering and the daemon's CPU included.

    sudo .venv/bin/python benchmarks/percpu_stats_read.py
    sudo .venv/bin/python benchmarks/percpu_stats_read.py --live 10000,100000,250000 \\
        --intervals 0,1,5,15 --duration 10
    sudo .venv/bin/python benchmarks/percpu_stats_read.py --live 200000 --via-daemon
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.kernel.shared_read import SharedRead

STATS = Path("/sys/kernel/debug/percpu_stats")
MAP_CHUNK = 50_000  # entries per filler map


def read_stats() -> int:
    """Read percpu_stats whole, as the daemon does; its size in bytes."""
    with STATS.open("rb") as f:
        return len(f.read())


def timed_read() -> float:
    start = time.perf_counter()
    read_stats()
    return time.perf_counter() - start


def live_allocations() -> int:
    return parse_percpu_stats(STATS.read_text()).globals.nr_cur_alloc


def fill_to(target: int, fds: list[int]) -> None:
    """Create filler maps until the kernel counts ``target`` live allocations."""
    while (live := live_allocations()) < target:
        fds.append(syscalls.create_percpu_array(8, min(MAP_CHUNK, target - live), "pcpu_fill"))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def read_costs(counts: list[int], reads: int, fds: list[int]) -> None:
    print("| live allocations | chunks | percpu_stats read, median | max |")
    print("| ---: | ---: | ---: | ---: |")
    for target in counts:
        fill_to(target, fds)
        times = [timed_read() for _ in range(reads)]
        stats = parse_percpu_stats(STATS.read_text())
        print(
            f"| {stats.globals.nr_cur_alloc:,} | {stats.globals.nr_chunks} "
            f"| {ms(statistics.median(times))} ms | {ms(max(times))} ms |"
        )


def scraper(rate: float, interval: float, threads: int, duration: float, url: str) -> None:
    """Scrape at ``rate`` per second in all for ``duration``; print the kernel reads done
    (the scrapes, with ``url``: the daemon's reads are not visible from here)."""
    shared = SharedRead(read_stats, interval) if interval > 0 and not url else None
    read: Callable[[], object] = shared if shared is not None else read_stats
    if url:

        def read() -> object:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read()

    reads = 0
    lock = threading.Lock()
    end = time.monotonic() + duration

    def one(offset: float) -> None:
        nonlocal reads
        period = threads / rate
        next_at = time.monotonic() + offset * period
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if now < next_at:
                time.sleep(next_at - now)
            read()
            with lock:
                reads += 1
            next_at += period

    workers = [threading.Thread(target=one, args=(i / threads,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(shared.reads if shared is not None else reads, flush=True)


def workload(duration: float, entries: int, netns: int) -> tuple[list[float], float]:
    """Create-and-close map times for ``duration``; then ``netns`` unshare -n runs, total."""
    creates = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        start = time.perf_counter()
        fd = syscalls.create_percpu_array(8, entries, "pcpu_work")
        creates.append(time.perf_counter() - start)
        syscalls.close(fd)
    start = time.perf_counter()
    for _ in range(netns):
        subprocess.run(["unshare", "-n", "true"], check=True)
    return creates, time.perf_counter() - start


def start_daemon(interval: float) -> tuple[subprocess.Popen[bytes], str]:
    """`pcpu-bpf serve` (bpf backend) on a free port, once it answers; and its URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).with_name("pcpu-bpf"))
    listen = f"127.0.0.1:{port}"
    daemon = subprocess.Popen(
        [exe, "serve", "--listen", listen, "--min-read-interval", str(interval)],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{listen}/metrics"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
            return daemon, url
        except OSError:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_case(args: argparse.Namespace, interval: float | None) -> tuple[list[float], float, int]:
    """One run of the workload beside one kind of scraper: create times, unshare total,
    kernel reads (or scrapes, through a daemon)."""
    proc = daemon = None
    url = ""
    if interval is not None and args.via_daemon:
        daemon, url = start_daemon(max(interval, 0.0))
    try:
        if interval is not None and interval >= 0:
            spec = f"{args.scrape_rate},{interval},{args.scrapers},{args.duration},{url}"
            proc = subprocess.Popen(
                [sys.executable, __file__, "--scraper", spec], stdout=subprocess.PIPE, text=True
            )
        creates, netns = workload(args.duration, args.map_entries, args.netns)
        reads = 0
        if proc is not None:
            out, _ = proc.communicate(timeout=args.duration + 60)
            reads = int(out.strip())
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
    return creates, netns, reads


def label(args: argparse.Namespace, interval: float | None) -> str:
    if interval is None:
        return "none"
    if interval < 0:
        return "none, daemon attached"
    how = "unthrottled" if interval == 0 else f"--min-read-interval {interval:g}"
    return f"{args.scrapers} at {args.scrape_rate:g}/s, {how}"


def impact(args: argparse.Namespace) -> None:
    print()
    print(
        f"workload: create+close a {args.map_entries:,}-entry per-CPU array for "
        f"{args.duration:g} s, then {args.netns} x `unshare -n true`; "
        f"{live_allocations():,} live allocations; {args.rounds} rounds, cases interleaved"
    )
    print()
    reads_name = "scrapes done" if args.via_daemon else "kernel reads"
    print(f"| scrapers | {reads_name} | map create median | p99 | unshare -n total, median |")
    print("| --- | ---: | ---: | ---: | ---: |")
    # None: nothing else runs; -1: the daemon attached (tracing every allocation), unscraped.
    cases: list[float | None] = [None, *([-1.0] if args.via_daemon else []), *args.intervals]
    results: dict[int, list[tuple[list[float], float, int]]] = {i: [] for i in range(len(cases))}
    # Interleaved rounds: load from elsewhere on the machine spreads over every case.
    for _ in range(args.rounds):
        for i, interval in enumerate(cases):
            results[i].append(run_case(args, interval))
    for i, interval in enumerate(cases):
        creates = sorted(t for r in results[i] for t in r[0])
        p99 = creates[min(len(creates) - 1, int(0.99 * len(creates)))]
        netns = statistics.median(r[1] for r in results[i])
        reads = statistics.median(r[2] for r in results[i])
        print(
            f"| {label(args, interval)} | {reads:g} | {ms(statistics.median(creates))} ms "
            f"| {ms(p99)} ms | {netns:.2f} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", default="10000,100000,250000")
    parser.add_argument("--reads", type=int, default=9)
    parser.add_argument("--intervals", default="0,1,5", help="0 = no throttle")
    parser.add_argument("--scrape-rate", type=float, default=11.0)
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--map-entries", type=int, default=5000)
    parser.add_argument("--netns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--via-daemon", action="store_true", help="scrape a real pcpu-bpf serve (bpf backend)"
    )
    parser.add_argument("--scraper", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scraper:
        rate, interval, threads, duration, url = args.scraper.split(",", 4)
        scraper(float(rate), float(interval), int(threads), float(duration), url)
        return
    args.intervals = [float(x) for x in args.intervals.split(",")]
    counts = [int(x) for x in args.live.split(",")]
    print(
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, "
        f"{live_allocations():,} live allocations before filling"
    )
    print()
    fds: list[int] = []
    try:
        read_costs(counts, args.reads, fds)
        impact(args)
    finally:
        for fd in fds:
            syscalls.close(fd)


if __name__ == "__main__":
    main()
