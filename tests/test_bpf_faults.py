"""Faults inside the BPF programs: a full site table, a full live table, and the kernel
refusing a map insert while the table still has room. Each is counted, exported in
/metrics, and nothing else is lost: the other sites, the size histogram, the failure and
chunk counters stay exact.

The programs are loaded without attaching and driven with BPF_PROG_TEST_RUN on small
tables, as tests/test_bpf_equivalence.py does. The kernel refuses an insert here because
the test filled the hash map from user space with keys no event carries (E2BIG), while
the programs' own bookkeeping (the site array, pcpu_site_count) still has room; the
programs treat any refused insert alike (a busy bucket, no memory). (There is no stack
map yet; a full one belongs here when one exists.)
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Samples, parse
from prog_test_run import run_raw_tp, unattached_backend
from prometheus_client import CollectorRegistry, generate_latest

from exporters.prometheus import PcpuCollector
from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.maps import PROGRAMS
from pcpu_bpf.bpf.tracefs import TracepointLayout, read_layout
from pcpu_bpf.model.events import (
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuFree,
)
from pcpu_bpf.model.layout import LIVE_ENTRY_FORMAT, SITE_KEY_FORMAT

pytestmark = pytest.mark.privileged

FIXTURE = Path(__file__).parent / "fixtures" / "tracefs" / "6.18"
LIVE_CAPACITY, SITE_CAPACITY = 8, 4
SITES = [0xFFFFFFFF81000000 + 0x1000 * i for i in range(8)]
NAMES = {addr: f"site{i}" for i, addr in enumerate(SITES)}
EVENT_NAME = {
    PercpuAlloc: "percpu_alloc_percpu",
    PercpuFree: "percpu_free_percpu",
    PercpuAllocFail: "percpu_alloc_percpu_fail",
    PercpuCreateChunk: "percpu_create_chunk",
}


def symbolize(addr: int) -> str:
    return NAMES.get(addr, hex(addr))


@pytest.fixture
def loaded() -> Iterator[tuple[object, TracepointLayout]]:

    backend = unattached_backend(
        live_capacity=LIVE_CAPACITY,
        site_capacity=SITE_CAPACITY,
        tracefs_root=FIXTURE,
        symbolizer=symbolize,
    )
    try:
        yield backend, read_layout(FIXTURE)
    finally:
        backend.close()


def alloc(site: int, ptr: int, size: int = 64) -> PercpuAlloc:
    return PercpuAlloc(site, False, False, size, 8, 0, 0, ptr, size * 2, 0)


def run(loaded: tuple[object, TracepointLayout], events: list[Event]) -> None:
    backend, layout = loaded
    for ev in events:
        name = EVENT_NAME[type(ev)]
        args = [int(getattr(ev, f)) for f in layout.fields[name]]
        assert run_raw_tp(backend.program_fds[PROGRAMS[name]], args) == 0


def exported(backend: object) -> Samples:
    registry = CollectorRegistry()
    registry.register(PcpuCollector(backend.snapshot))
    return parse(generate_latest(registry).decode())


def per_site(samples: Samples, family: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == family:
            site = dict(labels)["call_site"]
            out[site] = out.get(site, 0.0) + value
    return out


def dropped(samples: Samples, reason: str) -> float:
    return samples[("pcpu_tracking_dropped_total", frozenset({("reason", reason)}))]


def histogram_count(samples: Samples) -> float:
    return samples[("pcpu_allocation_size_bytes_count", frozenset())]


def everything_else() -> list[Event]:
    """A failure and a chunk creation: counters no table full may touch."""
    return [PercpuAllocFail(False, True, 64, 8), PercpuCreateChunk(0)]


def check_everything_else(samples: Samples) -> None:
    failures = sum(v for (n, _), v in samples.items() if n == "pcpu_allocation_failures_total")
    assert failures == 1
    assert samples[("pcpu_chunk_creations_total", frozenset())] == 1
    assert all(v == 1 for (n, _), v in samples.items() if n == "pcpu_collector_success"), (
        "every part served"
    )


def test_full_site_table(loaded) -> None:
    # Four sites get the four slots; two more are refused, every one of their allocations
    # counted as dropped; the first four keep counting exactly.
    events: list[Event] = [alloc(SITES[i], 0x1000 + 8 * i) for i in range(4)]
    events += [alloc(SITES[4], 0x2000), alloc(SITES[5], 0x2008), alloc(SITES[4], 0x2010)]
    events += [alloc(SITES[0], 0x3000), PercpuFree(0, 0, 0x1000), *everything_else()]
    run(loaded, events)
    samples = exported(loaded[0])
    assert dropped(samples, "site_table_full") == 3
    assert dropped(samples, "live_table_full") == 0
    assert per_site(samples, "pcpu_allocations_total") == {
        "site0": 2,
        "site1": 1,
        "site2": 1,
        "site3": 1,
    }
    assert per_site(samples, "pcpu_frees_total")["site0"] == 1
    assert per_site(samples, "pcpu_live_allocations")["site0"] == 1
    assert histogram_count(samples) == 8  # every allocation, refused or not
    assert samples[("pcpu_bpf_map_entries", frozenset({("map", "sites")}))] == SITE_CAPACITY
    check_everything_else(samples)


def test_full_live_table(loaded) -> None:
    # Twelve allocations into eight entries: four dropped, counted against their site;
    # their frees are untracked, the tracked ones come back exactly.
    ptrs = [0x5000 + 8 * i for i in range(12)]
    run(loaded, [alloc(SITES[0], p, size=40) for p in ptrs] + everything_else())
    samples = exported(loaded[0])
    assert dropped(samples, "live_table_full") == 4
    assert per_site(samples, "pcpu_allocations_total") == {"site0": 12}
    assert per_site(samples, "pcpu_live_allocations") == {"site0": 8}
    assert per_site(samples, "pcpu_live_bytes") == {"site0": 8 * 80}
    assert samples[("pcpu_bpf_map_entries", frozenset({("map", "live")}))] == LIVE_CAPACITY
    run(loaded, [PercpuFree(0, 0, p) for p in ptrs])
    samples = exported(loaded[0])
    assert per_site(samples, "pcpu_frees_total") == {"site0": 8}
    assert per_site(samples, "pcpu_freed_bytes_total") == {"site0": 8 * 80}
    assert per_site(samples, "pcpu_live_allocations") == {"site0": 0}
    assert samples[("pcpu_untracked_frees_total", frozenset())] == 4
    assert histogram_count(samples) == 12
    check_everything_else(samples)


def fill_from_user_space(fd: int, keys: Iterator[bytes], value: bytes) -> int:
    """Insert keys no event carries until the kernel refuses (E2BIG); how many went in."""
    for n, key in enumerate(keys):
        try:
            syscalls.update_elem(fd, key, value)
        except OSError as exc:
            assert exc.errno == errno.E2BIG, exc
            return n
    raise AssertionError("the map never filled")


def site_keys() -> Iterator[bytes]:
    return (struct.pack(SITE_KEY_FORMAT, (1 << 40) + i, 0, 1, 0, 0) for i in range(1000))


def live_keys() -> Iterator[bytes]:
    return (struct.pack("<Q", (1 << 50) + 8 * i) for i in range(1000))


def test_kernel_refusing_inserts(loaded) -> None:
    backend, _ = loaded
    maps = backend.loaded_set.maps
    run(loaded, [alloc(SITES[0], 0x1000)])  # site0 has slot 0, one live entry
    # The kernel now refuses any new site key, though three slots of the array are free.
    bogus = fill_from_user_space(maps["pcpu_site_slots"], site_keys(), b"\0" * 4)
    assert bogus == SITE_CAPACITY - 1
    run(loaded, [alloc(SITES[1], 0x1008), alloc(SITES[0], 0x1010)])
    samples = exported(backend)
    assert dropped(samples, "site_table_full") == 1
    # The slot the refused site used up stays empty, and is not exported.
    assert per_site(samples, "pcpu_allocations_total") == {"site0": 2}
    # And any new live entry (the table holds 2 of 8 entries).
    filler = bytes(struct.calcsize(LIVE_ENTRY_FORMAT))
    bogus_live = fill_from_user_space(maps["pcpu_live"], live_keys(), filler)
    assert bogus_live == LIVE_CAPACITY - 2
    run(loaded, [alloc(SITES[0], 0x1018), *everything_else()])
    samples = exported(backend)
    assert dropped(samples, "live_table_full") == 1
    assert per_site(samples, "pcpu_allocations_total") == {"site0": 3}
    # The refused one is not live.
    assert per_site(samples, "pcpu_live_allocations") == {"site0": 2}
    run(loaded, [PercpuFree(0, 0, 0x1000), PercpuFree(0, 0, 0x1018)])
    samples = exported(backend)
    assert per_site(samples, "pcpu_frees_total") == {"site0": 1}
    assert samples[("pcpu_untracked_frees_total", frozenset())] == 1
    assert histogram_count(samples) == 4
    check_everything_else(samples)
