"""Soak: `pcpu-bpf serve` on the live kernel for an hour of mixed percpu churn, scraped
every second; memory flat, counts exact against percpu_stats, no error logged.

Run as root from the repository (not part of the test suite):

    sudo .venv/bin/python benchmarks/soak.py --duration 3600 --out /tmp/soak
    sudo .venv/bin/python benchmarks/soak.py --duration 120        # a short trial

1. Calibration: map churn processes (tests/churn.py: per-CPU arrays of 8 B to 32 KiB
   created and closed) run with the daemon attached, 1 to --max-workers of them for
   --calibrate seconds each; the count with the highest allocation rate is kept (the
   highest rate this machine sustains with the profiler attached). With --workers N
   calibration is skipped.
2. Soak: a daemon (bpf backend, private pin directory, default options, its stderr to
   OUT/daemon.log) runs with that many map churn processes and one `unshare -n` churn
   for --duration seconds; one scrape every --scrape-interval seconds (each timed and
   checked: HTTP 200, parses, pcpu_collector_success all 1); every 10 s the daemon's
   VmRSS, Pss, fds and threads are written to OUT/samples.jsonl.
3. End: churn stops; once the kworkers have freed the closed maps, the daemon's counts
   since the start (allocation events: the size histogram's count; free events:
   tracked + untracked frees) are compared with the deltas of percpu_stats nr_alloc and
   nr_dealloc, each end bracketed by a percpu_stats read before and after its scrape.

The churn runs at nice 10 (--nice) so other work on the machine keeps its share; the
rate reached is the one printed. The summary goes to stdout and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from churn import Churn, ChurnCounts  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pcpu_bpf.bpf.pins import remove_set  # noqa: E402
from pcpu_bpf.daemon.source import SNAPSHOT_WINDOW  # noqa: E402
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats  # noqa: E402
from pcpu_bpf.model.kernel_stats import GlobalStats  # noqa: E402

PCPU_BPF = str(Path(sys.executable).with_name("pcpu-bpf"))
# In-flight allocations across one bracketed read: the kernel counts nr_alloc when it
# reserves the area (pcpu_alloc_area) and fires the tracepoint after populating pages.
SLACK = 4
LOG_PROBLEMS = re.compile(r"WARNING|ERROR|CRITICAL|Traceback", re.I)


@dataclass(frozen=True)
class Counts:
    """What the daemon counted: allocation events, free events, failures, misses."""

    allocations: float
    frees: float
    failures: float
    recursion_misses: float
    dropped: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> tuple[float, str]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read().decode()
        status = r.status
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return time.perf_counter() - start, body


def counts(text: str) -> tuple[Counts, dict[str, float]]:
    """The daemon's event counts and its collector_success by part."""
    total: dict[str, float] = {}
    success: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pcpu_collector_success":
                success[s.labels["collector"]] = s.value
            else:
                total[s.name] = total.get(s.name, 0.0) + s.value
    return (
        Counts(
            allocations=total["pcpu_allocation_size_bytes_count"],
            frees=total.get("pcpu_frees_total", 0.0) + total["pcpu_untracked_frees_total"],
            failures=total.get("pcpu_allocation_failures_total", 0.0),
            recursion_misses=total.get("pcpu_bpf_program_recursion_misses_total", 0.0),
            dropped=total.get("pcpu_tracking_dropped_total", 0.0),
        ),
        success,
    )


def bracketed(url: str) -> tuple[GlobalStats, Counts, GlobalStats]:
    """percpu_stats, a scrape, percpu_stats."""
    time.sleep(2 * SNAPSHOT_WINDOW)  # scrapes closer together share one snapshot
    g0 = read_percpu_stats().globals
    _, text = scrape(url)
    g1 = read_percpu_stats().globals
    return g0, counts(text)[0], g1


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name}")


def pss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    found = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(found[1]) if found else 0


def meminfo_percpu_kib() -> int:
    found = re.search(r"^Percpu:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(found[1]) if found else 0


def sample(pid: int, t: float) -> dict[str, float]:
    return {
        "t": round(t, 1),
        "rss_kib": status_field(pid, "VmRSS"),
        "pss_kib": pss_kib(pid),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "meminfo_percpu_kib": meminfo_percpu_kib(),
    }


def start_daemon(out: Path, pin_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (out / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [PCPU_BPF, "serve", "--listen", f"127.0.0.1:{port}", "--pin-dir", str(pin_dir)],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 180
    while True:
        try:
            scrape(url)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not answer; see daemon.log") from None
            time.sleep(0.2)


def calibrate(seconds: float, max_workers: int, nice: int) -> tuple[int, list[str]]:
    """The number of map churn processes with the highest allocation rate."""
    best, best_rate, lines = 1, 0.0, []
    for n in range(1, max_workers + 1):
        workers = [Churn("maps", nice=nice) for _ in range(n)]
        time.sleep(seconds)
        done = [w.stop() for w in workers]
        rate = sum(c.allocations / c.seconds for c in done)
        lines.append(f"{n} map churn processes: {rate:,.0f} allocations/s")
        print(lines[-1], flush=True)
        if rate > best_rate * 1.05:  # a worker more must earn its place
            best, best_rate = n, rate
    return best, lines


def settle(timeout: float = 300.0) -> None:
    """Wait until the kworkers have freed the closed maps: live allocations stop moving."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        live = read_percpu_stats().globals.nr_cur_alloc
        if live == last:
            return
        last = live
        time.sleep(2)


def outside(value: float, low: float, high: float) -> float:
    """How far ``value`` lies outside [low, high] (negative below), 0 inside."""
    return value - low if value < low else value - high if value > high else 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=0, help="map churn processes (0: calibrate)")
    ap.add_argument("--max-workers", type=int, default=(os.cpu_count() or 1) + 1)
    ap.add_argument("--calibrate", type=float, default=15.0)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(f"/tmp/pcpu-soak-{os.getpid()}"))
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pin_dir = Path(f"/sys/fs/bpf/pcpu-bpf-soak-{os.getpid()}")
    report: list[str] = [
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, commit "
        + subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    ]
    proc, url = start_daemon(out, pin_dir)
    try:
        if args.workers:
            workers_n = args.workers
        else:
            workers_n, lines = calibrate(args.calibrate, args.max_workers, args.nice)
            report += lines
        report.append(f"soak: {workers_n} map churn processes + 1 `unshare -n` churn")
        print(report[-1], flush=True)
        first = bracketed(url)
        churns = [Churn("maps", nice=args.nice) for _ in range(workers_n)]
        churns.append(Churn("netns", nice=args.nice))
        latencies: list[float] = []
        failures: list[str] = []
        samples: list[dict[str, float]] = []
        t0 = time.monotonic()
        next_scrape = next_sample = t0
        with (out / "samples.jsonl").open("w") as jsonl:
            while (now := time.monotonic()) - t0 < args.duration:
                if now >= next_sample:
                    samples.append(sample(proc.pid, now - t0))
                    jsonl.write(json.dumps(samples[-1]) + "\n")
                    jsonl.flush()
                    next_sample += 10
                try:
                    elapsed, text = scrape(url)
                    latencies.append(elapsed)
                    bad = {k: v for k, v in counts(text)[1].items() if v != 1}
                    if bad:
                        failures.append(f"{now - t0:.0f} s: collector_success {bad}")
                except Exception as exc:  # every kind of failure is a finding
                    failures.append(f"{now - t0:.0f} s: {type(exc).__name__}: {exc}")
                if proc.poll() is not None:
                    failures.append(f"{now - t0:.0f} s: the daemon exited {proc.returncode}")
                    break
                next_scrape += args.scrape_interval
                time.sleep(max(0.0, next_scrape - time.monotonic()))
        done: list[ChurnCounts] = [c.stop(timeout=120) for c in churns]
        ran = time.monotonic() - t0
        settle()
        last = bracketed(url)
        final = sample(proc.pid, time.monotonic() - t0)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        remove_set(pin_dir)

    map_allocs = sum(c.allocations for c in done if c.kind == "maps")
    netns = sum(c.rounds for c in done if c.kind == "netns")
    churn_errors = [e for c in done for e in c.errors]
    (a0, ca, a1), (b0, cb, b1) = first, last
    allocs, frees = cb.allocations - ca.allocations, cb.frees - ca.frees
    lo_a, hi_a = b0.nr_alloc - a1.nr_alloc - SLACK, b1.nr_alloc - a0.nr_alloc + SLACK
    lo_f, hi_f = b0.nr_dealloc - a1.nr_dealloc - SLACK, b1.nr_dealloc - a0.nr_dealloc + SLACK
    failed = cb.failures - ca.failures
    misses = cb.recursion_misses - ca.recursion_misses
    warm = [s for s in samples if s["t"] >= min(300.0, ran / 4)] or samples
    rss = [s["rss_kib"] / 1024 for s in warm]
    pss = [s["pss_kib"] / 1024 for s in warm]
    log_text = (out / "daemon.log").read_text(errors="replace")
    problems = [line for line in log_text.splitlines() if LOG_PROBLEMS.search(line)]
    report += [
        f"ran {ran:.0f} s: {map_allocs:,} map allocations ({map_allocs / ran:,.0f}/s) from "
        f"{sum(c.rounds for c in done if c.kind == 'maps'):,} maps, {netns:,} `unshare -n` "
        f"({netns / ran:.1f}/s); churn errors: {len(churn_errors)} {churn_errors[:3]}",
        f"all percpu events counted by the daemon: {allocs:,.0f} allocations "
        f"({allocs / ran:,.0f}/s), {frees:,.0f} frees; dropped from tracking "
        f"{cb.dropped - ca.dropped:,.0f}; recursion misses {misses:,.0f}; failures {failed:,.0f}",
        f"percpu_stats nr_alloc delta in [{lo_a + SLACK:,}, {hi_a - SLACK:,}], nr_dealloc delta "
        f"in [{lo_f + SLACK:,}, {hi_f - SLACK:,}] (bracketed reads); outside the brackets "
        f"(+-{SLACK} in flight): allocations {outside(allocs, lo_a, hi_a):+,.0f} "
        f"({outside(allocs, lo_a, hi_a) / max(allocs, 1):.1e}), frees "
        f"{outside(frees, lo_f, hi_f):+,.0f} ({outside(frees, lo_f, hi_f) / max(frees, 1):.1e})",
        f"scrapes: {len(latencies):,}, failed {len(failures)}; latency median "
        f"{statistics.median(latencies) * 1000:.1f} ms, p99 {pct(latencies, 0.99) * 1000:.1f} "
        f"ms, max {max(latencies) * 1000:.1f} ms"
        if latencies
        else "no scrape answered",
        f"daemon VmRSS after warm-up: first {rss[0]:.1f} MiB, median {statistics.median(rss):.1f},"
        f" max {max(rss):.1f}, last {rss[-1]:.1f}, at the end {final['rss_kib'] / 1024:.1f} MiB; "
        f"Pss first {pss[0]:.1f}, max {max(pss):.1f}, last {pss[-1]:.1f} MiB; fds "
        f"{min(s['fds'] for s in samples):.0f}-{max(s['fds'] for s in samples):.0f}, threads "
        f"{min(s['threads'] for s in samples):.0f}-{max(s['threads'] for s in samples):.0f}",
        f"meminfo Percpu {samples[0]['meminfo_percpu_kib']:,.0f} kB at the start, max "
        f"{max(s['meminfo_percpu_kib'] for s in samples):,.0f} kB, "
        f"{final['meminfo_percpu_kib']:,.0f} kB at the end",
        f"daemon log: {len(log_text.splitlines())} lines, {len(problems)} warnings or errors"
        + (f": {problems[:5]}" if problems else ""),
    ]
    report += [f"scrape failure: {f}" for f in failures[:20]]
    text = "\n".join(report) + "\n"
    (out / "summary.md").write_text(text)
    print(text, end="")
    return 0 if not failures and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
