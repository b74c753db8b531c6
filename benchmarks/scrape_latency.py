"""Scrape latency of the daemon's /metrics with 500 call sites and full kernel stats.

Starts the daemon's own serving code (pcpu_bpf.daemon.server.serve) in a child process over a
synthetic backend, scrapes /metrics N times over HTTP from this process, and reports the
median and p99 latency, the child's resident memory, and its CPU time per scrape.
--idle N and --slow N hold N idle connections and N that send a request head one byte
at a time, all through the measurement (the daemon holds at most --max-connections).

    .venv/bin/python benchmarks/scrape_latency.py [--sites 500] [--scrapes 200] [--gzip]
    .venv/bin/python benchmarks/scrape_latency.py --idle 500 --slow 500
    .venv/bin/python benchmarks/scrape_latency.py --sites 50 --scrapes 500 --burst 50
    .venv/bin/python benchmarks/scrape_latency.py --url http://127.0.0.1:9717/metrics
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.model.events import TRACEPOINTS
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.layout import NR_SIZE_SLOTS
from pcpu_bpf.model.snapshot import (
    MapUsage,
    ProgramStats,
    SiteKey,
    SiteRecord,
    SizeHistogram,
    Snapshot,
)

STATS = Path(__file__).parent.parent / "tests" / "fixtures" / "percpu_stats" / "live-6.18.txt"
TICKS = os.sysconf("SC_CLK_TCK")


class SyntheticBackend(Backend):
    """Snapshots with ``sites`` call sites, every optional part filled, counters moving."""

    name = "synthetic"

    def __init__(self, sites: int) -> None:
        records = {}
        for i in range(sites):
            site = f"synthetic_site_{i:04d}"
            records[SiteKey(site)] = SiteRecord(
                1000 + i, 16_000, 64_000, 900, 57_600, 100 + i, 6_400
            )
            if i % 5 == 0:  # some sites also allocate atomically
                records[SiteKey(site, atomic=True)] = SiteRecord(10, 160, 640)
        self._base = Snapshot(
            backend="synthetic",
            kernel=os.uname().release,
            timestamp=0.0,
            sites=records,
            size_histogram=SizeHistogram(tuple(range(NR_SIZE_SLOTS)), 123_456),
            failures={(a, r): 1 for a in (False, True) for r in (False, True)},
            failed_size_histogram=SizeHistogram((1,) * NR_SIZE_SLOTS, 99_999),
            chunk_creations=10,
            chunk_destructions=8,
            dropped={"live_table_full": 0, "site_table_full": 0},
            kernel_stats=KernelStats(parse_percpu_stats(STATS.read_text()), 3 << 20),
            fields_available={
                (event, f): True
                for event, cls in TRACEPOINTS.items()
                for f in cls.__dataclass_fields__
            },
            programs={
                p: ProgramStats(1000, 50_000, 0)
                for p in (
                    "on_alloc",
                    "on_free",
                    "on_alloc_fail",
                    "on_create_chunk",
                    "on_destroy_chunk",
                )
            },
            maps={"live": MapUsage(5000, 262_144), "sites": MapUsage(sites, 4096)},
        )
        self._n = 0

    def snapshot(self) -> Snapshot:
        self._n += 1
        return dataclasses.replace(
            self._base, timestamp=float(self._n), chunk_creations=10 + self._n
        )


def child(port: int, sites: int) -> None:
    """Run the daemon's serve() over the synthetic backend until SIGTERM."""
    from pcpu_bpf.daemon.listener import ListenAddress
    from pcpu_bpf.daemon.server import serve

    with SyntheticBackend(sites) as backend:
        serve(backend, ListenAddress("127.0.0.1", port))


class Abusers:
    """Connections that hold a slot: ``idle`` send nothing, ``slow`` a head byte by byte."""

    def __init__(self, port: int, idle: int, slow: int) -> None:
        self.port = port
        self.socks: list[socket.socket] = []
        self.slow: list[socket.socket] = []
        self._stop = threading.Event()
        for i in range(idle + slow):
            sock = socket.create_connection(("127.0.0.1", port))
            self.socks.append(sock)
            if i >= idle:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")
                self.slow.append(sock)
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        # One byte per connection every 100 ms; dropped ones reconnect, as an attacker would.
        while not self._stop.wait(0.1):
            for i, sock in enumerate(self.slow):
                try:
                    sock.sendall(b"X")
                except OSError:
                    sock.close()
                    try:
                        self.slow[i] = socket.create_connection(("127.0.0.1", self.port))
                        self.slow[i].sendall(b"GET /metrics HTTP/1.1\r\n")
                        self.socks.append(self.slow[i])
                    except OSError:
                        pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def scrape(url: str, gzipped: bool = False) -> tuple[float, bytes]:
    """One GET; with ``gzipped`` as Prometheus asks (Accept-Encoding: gzip)."""
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        body: bytes = r.read()
    elapsed = time.perf_counter() - start
    return elapsed, gzip.decompress(body) if gzipped else body


def in_bursts(url: str, scrapes: int, burst: int, gzipped: bool) -> list[tuple[float, bytes]]:
    """``scrapes`` scrapes, ``burst`` at a time released together (scrapers in step)."""
    results: list[tuple[float, bytes]] = []
    for _ in range(max(1, scrapes // burst)):
        barrier = threading.Barrier(burst)

        def one(barrier: threading.Barrier) -> None:
            barrier.wait()
            results.append(scrape(url, gzipped))

        threads = [threading.Thread(target=one, args=(barrier,)) for _ in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def measure(url: str, scrapes: int, pid: int | None, gzipped: bool, burst: int = 1) -> None:
    for _ in range(5):  # warm up: imports, first allocations
        scrape(url, gzipped)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    if burst > 1:
        results = in_bursts(url, scrapes, burst, gzipped)
        scrapes = len(results)
    else:
        results = [scrape(url, gzipped) for _ in range(scrapes)]
    cpu1 = cpu_seconds(pid) if pid else 0.0
    latencies = sorted(r[0] for r in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    body = results[-1][1]
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    how = f" in bursts of {burst}" if burst > 1 else ""
    print(
        f"{scrapes} scrapes{how}{' (gzip)' if gzipped else ''}, {len(body)} bytes, {series} series"
    )
    print(
        f"latency median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    if pid:
        print(
            f"daemon RSS {rss_bytes(pid) / 2**20:.1f} MiB, "
            f"CPU {(cpu1 - cpu0) / scrapes * 1000:.1f} ms per scrape"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--url", help="measure a running daemon instead (no RSS/CPU)")
    parser.add_argument("--gzip", action="store_true", help="ask for gzip, as Prometheus does")
    parser.add_argument("--burst", type=int, default=1, help="scrapes released together")
    parser.add_argument("--idle", type=int, default=0, help="idle connections held")
    parser.add_argument("--slow", type=int, default=0, help="slow-head connections held")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sites)
        return
    if args.url:
        measure(args.url, args.scrapes, None, args.gzip, args.burst)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(port), "--sites", str(args.sites)]
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(200):
            try:
                scrape(url)
                break
            except OSError:
                time.sleep(0.05)
        print(
            f"{args.sites} call sites, kernel stats from {STATS.name}, python "
            f"{sys.version.split()[0]}, {os.cpu_count()} CPUs"
        )
        abusers = Abusers(port, args.idle, args.slow) if args.idle or args.slow else None
        try:
            if abusers is not None:
                print(f"holding {args.idle} idle and {args.slow} slow-head connections")
            measure(url, args.scrapes, proc.pid, args.gzip, args.burst)
            if abusers is not None:
                fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
                print(f"daemon fds {fds}, threads {len(os.listdir(f'/proc/{proc.pid}/task'))}")
        finally:
            if abusers is not None:
                abusers.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
