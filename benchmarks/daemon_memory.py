"""Memory of `pcpu-bpf serve` with the bpf backend, and the percpu memory it adds.

Run as root from the repository:  .venv/bin/python benchmarks/daemon_memory.py

Starts the daemon on a private pin directory and a free loopback port, then reports:
Pss from /proc/PID/smaps_rollup at idle (after one scrape) and after --events percpu
events (per-CPU array maps of 16 entries created and closed, one scrape every 100,000
events); whether bcc or LLVM is mapped (/proc/PID/maps); percpu_stats nr_cur_alloc and
meminfo Percpu before and after the start; and the daemon's own
pcpu_profiler_percpu_bytes. Removes the pinned set at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.pins import remove_set
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats

PCPU_BPF = str(Path(sys.executable).with_name("pcpu-bpf"))


def pss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"^Pss:\s+(\d+) kB", text, re.M)[1])  # type: ignore[index]


def meminfo_percpu() -> int:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"^Percpu:\s+(\d+) kB", text, re.M)[1]) * 1024  # type: ignore[index]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return str(r.read().decode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    args = ap.parse_args()
    pin_dir = Path(f"/sys/fs/bpf/pcpu-bpf-bench-{os.getpid()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    stats0, percpu0 = read_percpu_stats().globals, meminfo_percpu()
    proc = subprocess.Popen(
        [PCPU_BPF, "serve", "--listen", f"127.0.0.1:{port}", "--pin-dir", str(pin_dir)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                text = scrape(url)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the daemon did not answer") from None
                time.sleep(0.2)
        stats1, percpu1 = read_percpu_stats().globals, meminfo_percpu()
        spent = re.search(r"^pcpu_profiler_percpu_bytes (\S+)", text, re.M)
        idle = pss_kib(proc.pid)
        mapped = Path(f"/proc/{proc.pid}/maps").read_text()
        bcc = [lib for lib in ("libbcc", "LLVM", "libclang") if lib in mapped]
        done = 0
        t0 = time.monotonic()
        while done < args.events:
            for i in range(100_000 // 32):
                syscalls.close(syscalls.create_percpu_array(8 * (1 + i % 64), 16))
            done += 100_000
            scrape(url)
        elapsed = time.monotonic() - t0
        busy = pss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        remove_set(pin_dir)
    print(
        f"Pss idle: {idle / 1024:.1f} MiB; after {done:,} events ({elapsed:.0f} s): "
        f"{busy / 1024:.1f} MiB; bcc/LLVM mapped: {bcc or 'no'}"
    )
    print(
        f"percpu_stats nr_cur_alloc {stats0.nr_cur_alloc} -> {stats1.nr_cur_alloc} "
        f"({stats1.nr_cur_alloc - stats0.nr_cur_alloc:+}); meminfo Percpu "
        f"{percpu0} -> {percpu1} ({percpu1 - percpu0:+} bytes)"
    )
    print(f"pcpu_profiler_percpu_bytes {spent[1] if spent else '?'} ({os.cpu_count()} CPUs online)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
