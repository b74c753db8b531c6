"""Pieces of the load test and its benchmark (not a test): concurrent scrapers in rounds,
the daemon's memory, a direct read of its pinned maps, and the kernel's own trace of the
allocations other processes make at one call site meanwhile."""

from __future__ import annotations

import dataclasses
import re
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pcpu_bpf.bpf import pins, syscalls
from pcpu_bpf.bpf.maps import BPF_MAPS, read_tables
from pcpu_bpf.kernel.procfs import read_possible_cpus
from pcpu_bpf.model.layout import DEFAULT_SITE_CAPACITY
from pcpu_bpf.model.tables import SiteValue

TRACEFS = Path("/sys/kernel/tracing")
_FIELDS = dataclasses.fields(SiteValue)


def vm_rss(pid: int) -> int:
    """A process's resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class LoadResult:
    """What the scrapers saw: latencies, failures, and the daemon's RSS after each round."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss_after_round: list[int] = field(default_factory=list)
    bodies: int = 0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        lat = self.latencies
        return (
            f"{len(lat)} scrapes, {len(self.failures)} failed; median "
            f"{statistics.median(lat) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms,"
            f" max {max(lat) * 1000:.1f} ms"
        )


def scrape_rounds(
    url: str, pid: int, scrapers: int, rounds: int, check: object = None
) -> LoadResult:
    """``rounds`` times, ``scrapers`` threads released together each scrape once; every
    answer must be 200 with a body ``check(body)`` accepts (when given)."""
    result = LoadResult()
    lock = threading.Lock()

    def one(barrier: threading.Barrier) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                body = response.read().decode()
                status = response.status
            elapsed = time.perf_counter() - start
            problem = None if status == 200 else f"HTTP {status}"
            if problem is None and callable(check):
                problem = check(body)
        except Exception as exc:  # every kind of failure is what the test counts
            elapsed, problem = time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
        with lock:
            result.latencies.append(elapsed)
            result.bodies += problem is None
            if problem is not None:
                result.failures.append(problem)

    for _ in range(rounds):
        barrier = threading.Barrier(scrapers)
        threads = [threading.Thread(target=one, args=(barrier,)) for _ in range(scrapers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.rss_after_round.append(vm_rss(pid))
    return result


def function_range(name: str, kallsyms: Path = Path("/proc/kallsyms")) -> tuple[int, int]:
    """[start, end) of a kernel text symbol: its address to the next higher one."""
    start = None
    addresses = []
    with kallsyms.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in "tT":
                continue
            addr = int(parts[0], 16)
            addresses.append(addr)
            if parts[2] == name:
                start = addr
    if start is None:
        raise LookupError(f"{name} not in {kallsyms}")
    return start, min(a for a in addresses if a > start)


def site_value(pin_dir: Path, start: int, end: int) -> tuple[SiteValue, int]:
    """The counts of every site key inside [start, end), read from the pinned maps now,
    and the allocations dropped from the full live table so far."""
    fds = {name: syscalls.obj_get(pins.current(pin_dir) / pins.map_pin(name)) for name in BPF_MAPS}
    try:
        tables = read_tables(fds, read_possible_cpus(), DEFAULT_SITE_CAPACITY)
    finally:
        for fd in fds.values():
            syscalls.close(fd)
    total = SiteValue()
    for key, v in tables.sites.items():
        if start <= key[0] < end:  # the call site's address
            total = SiteValue(
                **{f.name: getattr(total, f.name) + getattr(v, f.name) for f in _FIELDS}
            )
    return total, tables.dropped["live_table_full"]


@dataclass
class Trace:
    """Lines an ftrace instance recorded, and whether its buffer overflowed."""

    lines: list[str] = field(default_factory=list)
    overflowed: bool = False


@contextmanager
def foreign_allocations(start: int, end: int, own_pids: Sequence[int]) -> Iterator[Trace]:
    """A private ftrace instance recording every percpu_alloc_percpu with a call site in
    [start, end) made by a process other than ``own_pids``; filled in on exit."""
    inst = TRACEFS / "instances" / f"pcpu_bpf_load_{own_pids[0]}"
    inst.mkdir()
    event = inst / "events/percpu/percpu_alloc_percpu"
    trace = Trace()
    try:
        (inst / "buffer_size_kb").write_text("1024")
        others = " && ".join(f"common_pid != {pid}" for pid in own_pids)
        (event / "filter").write_text(f"call_site >= {start} && call_site < {end} && {others}")
        (event / "enable").write_text("1")
        yield trace
        (event / "enable").write_text("0")
        text = (inst / "trace").read_text()
        trace.lines = [line for line in text.splitlines() if "percpu_alloc_percpu:" in line]
        counts = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text)
        trace.overflowed = counts is None or counts[1] != counts[2]
    finally:
        inst.rmdir()
