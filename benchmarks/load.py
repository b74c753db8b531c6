"""Load: scrape latency and daemon memory with 50 concurrent scrapers beside percpu churn.

The larger run of tests/test_load.py. Run as root from the repository:

    sudo .venv/bin/python benchmarks/load.py --scrapers 50 --rounds 20
    sudo .venv/bin/python benchmarks/load.py --no-churn            # the same, host quiet

Starts `pcpu-bpf serve` (bpf backend, default options, a private pin directory), starts
the map churn and the `unshare -n` churn of tests/churn.py, then --rounds times releases
--scrapers threads together, each scraping /metrics once (every answer must be 200 with
every pcpu_collector_success 1). Prints the latency median, p99 and max, the daemon's
VmRSS after each round, and the churn's rate; then checks the counts at
bpf_map_alloc_percpu as the test does (the churn's own, plus what an ftrace instance saw
other processes allocate there).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from churn import Churn  # noqa: E402
from load_run import (  # noqa: E402
    foreign_allocations,
    function_range,
    scrape_rounds,
    site_value,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pcpu_bpf.bpf.pins import remove_set  # noqa: E402

PCPU_BPF = str(Path(sys.executable).with_name("pcpu-bpf"))
SITE_FUNCTION = "bpf_map_alloc_percpu"


def site_sums(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("call_site") == SITE_FUNCTION or s.name.startswith(
                "pcpu_tracking_dropped"
            ):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return str(r.read().decode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-churn", action="store_true")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin_dir = Path(f"/sys/fs/bpf/pcpu-bpf-load-{os.getpid()}")
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen(
        [PCPU_BPF, "serve", "--listen", f"127.0.0.1:{port}", "--pin-dir", str(pin_dir)],
        stderr=subprocess.PIPE,
        text=True,
    )
    start, end = function_range(SITE_FUNCTION)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                scrape(url)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not answer") from None
                time.sleep(0.2)
        maps, netns = Churn("maps", gated=True), Churn("netns", gated=True)
        with foreign_allocations(start, end, [os.getpid(), maps.pid]) as foreign:
            base, base_dropped = site_value(pin_dir, start, end)
            if not args.no_churn:
                maps.go()
                netns.go()
            t0 = time.monotonic()
            load = scrape_rounds(url, proc.pid, args.scrapers, args.rounds)
            ran = time.monotonic() - t0
            own, churned = maps.stop(), netns.stop()
            deadline = time.monotonic() + 120
            while True:
                final = site_sums(scrape(url))
                frees = final.get("pcpu_frees_total", 0.0) - base.frees
                drops = final.get("pcpu_tracking_dropped_total", 0.0) - base_dropped
                if frees + drops >= own.allocations or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
        remove_set(pin_dir)
    rss = [r / 2**20 for r in load.rss_after_round]
    allocations = final.get("pcpu_allocations_total", 0.0) - base.allocations
    print(
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; {args.scrapers} scrapers x {args.rounds} rounds in "
        f"{ran:.1f} s"
    )
    print(load.summary())
    if load.failures:
        print("failures:", load.failures[:5])
    print(
        f"daemon VmRSS after round 1 {rss[0]:.1f} MiB, max after {max(rss[1:] or rss):.1f} MiB, "
        f"last {rss[-1]:.1f} MiB (growth {max(rss[1:] or rss) - rss[0]:+.2f} MiB)"
    )
    step = max(1, len(rss) // 10)
    print("daemon VmRSS every", step, "rounds (MiB):", " ".join(f"{r:.1f}" for r in rss[::step]))
    print(
        f"churn: {own.allocations:,} map allocations ({own.allocations / ran:,.0f}/s), "
        f"{churned.rounds} x unshare -n ({churned.rounds / ran:.0f}/s)"
    )
    theirs = "unknown (trace overflowed)" if foreign.overflowed else len(foreign.lines)
    print(
        f"{SITE_FUNCTION}: daemon counted {allocations:,.0f} allocations, {frees:,.0f} frees, "
        f"{drops:,.0f} dropped; the churn made {own.allocations:,}; other processes {theirs}"
    )
    problems = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    print(f"daemon log: {len(problems)} warnings or errors {problems[:3]}")
    return 0 if not load.failures and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
