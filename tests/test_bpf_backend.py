"""The bpf backend on the live kernel: exact counts from a workload only the test causes.

Per-CPU array maps with value size V and N entries make exactly N percpu allocations of
V bytes from bpf_map_alloc_percpu (map_create -> array_map_alloc). Other
processes allocate too, so exact assertions are kept to that call site and to sizes
nothing else requests in the window (1000, 3000); a private tracefs instance records
what bytes_alloc the kernel itself reports for those events.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prog_test_run import run_raw_tp
from waiting import wait_until

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.loader import PROGRAMS
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.errors import BackendUnavailable
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.model.aggregation import Aggregator
from pcpu_bpf.model.breakdown import nr_units
from pcpu_bpf.model.events import (
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.layout import DEFAULT_SITE_CAPACITY, size_slot
from pcpu_bpf.model.snapshot import SiteKey, SiteRecord, Snapshot
from pcpu_bpf.model.tables import Tables

pytestmark = pytest.mark.privileged

TRACEFS = Path("/sys/kernel/tracing")
SITE = "bpf_map_alloc_percpu"
KEY = SiteKey(SITE, atomic=False, reserved=False)


@pytest.fixture
def backend(live_backend: object) -> object:
    return live_backend


def site(s: Snapshot) -> SiteRecord:
    return s.by_call_site.get(SITE, SiteRecord())


def allocs(s: Snapshot) -> int:
    return s.sites.get(KEY, SiteRecord()).allocations


def poll(snapshot: Callable[[], Snapshot], done: Callable[[Snapshot], bool], what: str) -> Snapshot:
    """Snapshots until ``done``; the kernel frees a closed map's memory from a kworker."""

    def finished() -> Snapshot | None:
        s = snapshot()
        return s if done(s) else None

    return wait_until(finished, interval=0.1, what=what)


@contextmanager
def kernel_reported_bytes(size: int) -> Iterator[list[int]]:
    """bytes_alloc of every percpu_alloc_percpu of ``size``, via a private tracefs instance."""
    inst = TRACEFS / "instances" / f"pcpu_bpf_test_{size}"
    inst.mkdir()
    event = inst / "events/percpu/percpu_alloc_percpu"
    out: list[int] = []
    try:
        (event / "filter").write_text(f"size == {size}")
        (event / "enable").write_text("1")
        yield out
        (event / "enable").write_text("0")
        text = (inst / "trace").read_text()
        out += [int(v) for v in re.findall(r"bytes_alloc=(\d+)", text)]
    finally:
        inst.rmdir()


@pytest.mark.parametrize(("value_size", "entries"), [(1000, 37), (3000, 23)])
def test_exact_counts_for_per_cpu_maps(backend, value_size: int, entries: int) -> None:
    slot = size_slot(value_size)
    with kernel_reported_bytes(value_size) as reported:
        before = backend.snapshot()
        fd = syscalls.create_percpu_array(value_size, entries)
        mid = backend.snapshot()
    assert len(reported) == entries and len(set(reported)) == 1, reported
    # Percpu bytes: the size on every unit; the rest of bytes_alloc is the extension.
    units = nr_units(read_percpu_stats(), backend.possible_cpus)
    used = value_size * units
    extension = reported[0] - value_size * backend.possible_cpus

    a0 = before.sites.get(KEY, SiteRecord())
    a1 = mid.sites[KEY]
    assert a1.allocations - a0.allocations == entries
    assert a1.requested_bytes - a0.requested_bytes == entries * value_size
    assert a1.allocated_bytes - a0.allocated_bytes == entries * used
    assert site(mid).live_allocations - site(before).live_allocations == entries
    assert site(mid).live_bytes - site(before).live_bytes == entries * used
    ext0 = site(before).memcg_extension_bytes or 0
    assert site(mid).memcg_extension_bytes == ext0 + entries * extension
    assert mid.size_histogram.counts[slot] - before.size_histogram.counts[slot] == entries

    syscalls.close(fd)
    after = poll(
        backend.snapshot,
        lambda s: site(s).frees - site(mid).frees >= entries,
        what=f"the {entries} frees of the closed map",
    )
    assert site(after).frees - site(mid).frees == entries
    assert site(after).freed_bytes - site(mid).freed_bytes == entries * used
    assert site(after).live_bytes == site(before).live_bytes
    assert site(after).live_allocations == site(before).live_allocations
    assert (site(after).memcg_extension_bytes or 0) == ext0
    # frees never touch the allocation counters
    assert after.sites[KEY].allocations == a1.allocations
    assert after.sites[KEY].allocated_bytes == a1.allocated_bytes


def test_snapshot_optional_parts(backend) -> None:
    fd = syscalls.create_percpu_array(8, 10)
    s = backend.snapshot()
    syscalls.close(fd)
    assert s.backend == "bpf"
    assert s.fields_available is not None and all(s.fields_available.values())
    assert s.programs is not None and set(s.programs) == {
        "on_alloc",
        "on_free",
        "on_alloc_fail",
        "on_create_chunk",
        "on_destroy_chunk",
    }
    assert s.maps is not None
    assert s.maps["live"].capacity == 262_144 and s.maps["sites"].capacity == DEFAULT_SITE_CAPACITY
    assert 10 <= s.maps["live"].entries < s.maps["live"].capacity
    assert s.kernel_stats is not None and s.kernel_stats.percpu_stats is not None


def test_run_stats_follow_the_sysctl(backend) -> None:
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = sysctl.read_text().strip()
    try:
        sysctl.write_text("0")
        assert backend.snapshot().programs["on_alloc"].run_time_ns is None
        sysctl.write_text("1")
        fd = syscalls.create_percpu_array(8, 5)
        syscalls.close(fd)
        stats = backend.snapshot().programs["on_alloc"]
        assert stats.runs is not None and stats.runs >= 5
        assert stats.run_time_ns is not None and stats.run_time_ns > 0
    finally:
        sysctl.write_text(old)


def test_chunks_created_then_destroyed(backend) -> None:
    # More 32 KiB entries than all free space of the existing chunks plus two units: the
    # allocator must create at least two chunks only our map fills, and once the map is
    # freed, balance work destroys fully free chunks beyond one spare.
    stats0 = read_percpu_stats()
    free = sum(c.free_bytes for c in stats0.chunks)
    entries = (free + 2 * stats0.info.unit_size) // 32768 + 1
    before = backend.snapshot()
    fd = syscalls.create_percpu_array(32768, entries)
    mid = backend.snapshot()
    stats1 = read_percpu_stats()
    created = mid.chunk_creations - before.chunk_creations
    assert created >= 2
    assert created >= stats1.globals.nr_chunks - stats0.globals.nr_chunks
    syscalls.close(fd)

    def chunks_destroyed(s: Snapshot) -> bool:
        # Destroyed at least one, and every chunk percpu_stats no longer lists (the
        # kernel counts a destruction in percpu_stats just before the tracepoint fires).
        gone = stats1.globals.nr_chunks - read_percpu_stats().globals.nr_chunks
        return s.chunk_destructions - mid.chunk_destructions >= max(gone, 1)

    after = poll(backend.snapshot, chunks_destroyed, what="balance work to destroy free chunks")
    destroyed = after.chunk_destructions - mid.chunk_destructions
    assert destroyed >= 1
    assert destroyed >= stats1.globals.nr_chunks - read_percpu_stats().globals.nr_chunks


def test_full_live_table_drops_and_keeps_counts() -> None:
    from pcpu_bpf.backends.bpf import BpfBackend

    entries, value_size = 300, 1000
    slot = size_slot(value_size)
    with BpfBackend(live_capacity=32) as small:
        before = small.snapshot()
        fd = syscalls.create_percpu_array(value_size, entries)
        mid = small.snapshot()
        tracked = site(mid).live_allocations - site(before).live_allocations
        dropped = mid.dropped["live_table_full"] - before.dropped["live_table_full"]
        assert mid.maps["live"].entries == 32
        assert 0 <= tracked <= 32
        assert tracked + dropped == entries  # each allocation is tracked or counted dropped
        assert allocs(mid) - allocs(before) == entries
        assert mid.size_histogram.counts[slot] - before.size_histogram.counts[slot] == entries
        syscalls.close(fd)
        after = poll(
            small.snapshot,
            lambda s: (
                s.untracked_frees - mid.untracked_frees >= dropped
                and site(s).frees - site(mid).frees >= tracked
            ),
            what="the frees of the closed map, tracked and untracked",
        )
        # Frees of dropped allocations are untracked; the tracked ones come back exactly.
        assert site(after).frees - site(mid).frees == tracked
        assert site(after).live_allocations == site(before).live_allocations
        assert after.sites[KEY].allocations == mid.sites[KEY].allocations
        assert after.dropped["live_table_full"] >= mid.dropped["live_table_full"]


def test_agrees_with_percpu_stats_over_a_quiet_window(backend) -> None:
    """Event counts vs nr_alloc/nr_dealloc deltas of debugfs percpu_stats.

    The two cannot be read at one instant, so each end is bracketed by a percpu_stats
    read before and after the snapshot; the counted delta must lie between the inner and
    the outer bracket, widened by SLACK: the kernel counts nr_alloc when it reserves the
    area (pcpu_alloc_area) but fires the tracepoint only after populating pages, which
    may sleep, so a few allocations can be in flight across a snapshot.
    """
    slack = 4

    def read() -> tuple[int, int, Snapshot, int, int]:
        g0 = read_percpu_stats().globals
        s = backend.snapshot()
        g1 = read_percpu_stats().globals
        return g0.nr_alloc, g0.nr_dealloc, s, g1.nr_alloc, g1.nr_dealloc

    def counted(s: Snapshot) -> tuple[int, int]:
        frees = s.totals.frees + s.untracked_frees
        return s.size_histogram.count, frees

    a_alloc0, a_free0, s_a, a_alloc1, a_free1 = read()
    fd = syscalls.create_percpu_array(1000, 50)
    syscalls.close(fd)
    poll(
        backend.snapshot,
        lambda s: site(s).frees - site(s_a).frees >= 50,
        what="the 50 frees of the closed map",
    )
    b_alloc0, b_free0, s_b, b_alloc1, b_free1 = read()

    allocs = counted(s_b)[0] - counted(s_a)[0]
    frees = counted(s_b)[1] - counted(s_a)[1]
    assert allocs >= 50
    assert b_alloc0 - a_alloc1 - slack <= allocs <= b_alloc1 - a_alloc0 + slack
    assert b_free0 - a_free1 - slack <= frees <= b_free1 - a_free0 + slack


def test_missing_tracefs_is_a_clear_error(tmp_path: Path) -> None:
    from pcpu_bpf.backends.bpf import BpfBackend

    with pytest.raises(BackendUnavailable, match="mount -t tracefs"):
        BpfBackend(tracefs_root=tmp_path, attach=False)


def test_missing_tracepoint_is_a_clear_error(tmp_path: Path) -> None:
    from pcpu_bpf.backends.bpf import BpfBackend

    (tmp_path / "events/percpu").mkdir(parents=True)
    with pytest.raises(BackendUnavailable, match="percpu:percpu_alloc_percpu not found"):
        BpfBackend(tracefs_root=tmp_path, attach=False)


def test_two_loaded_sets_in_one_process_keep_their_own_maps() -> None:
    from pcpu_bpf.backends.bpf import BpfBackend

    layout = read_layout()
    events = {
        "percpu_alloc_percpu": PercpuAlloc(0x1000, False, False, 1000, 8, 0, 0, 0x4000, 2000, 0),
        "percpu_free_percpu": PercpuFree(0, 0, 0x4000),
        "percpu_alloc_percpu_fail": PercpuAllocFail(False, True, 64, 8),
        "percpu_create_chunk": PercpuCreateChunk(0),
        "percpu_destroy_chunk": PercpuDestroyChunk(0),
    }

    def run_every_program(b: BpfBackend) -> None:
        for tracepoint, function in PROGRAMS.items():
            ev = events[tracepoint]
            args = [int(getattr(ev, f)) for f in layout.fields[tracepoint]]
            assert run_raw_tp(b.program_fds[function], args) == 0

    def opened() -> BpfBackend:
        return BpfBackend(attach=False, symbolizer=hex, kernel_stats=lambda: None)

    with opened() as one, opened() as two:
        assert not set(one.program_fds.values()) & set(two.program_fds.values())
        agg = Aggregator(hex, possible_cpus=one.possible_cpus)
        for ev in events.values():
            agg.apply(ev)

        run_every_program(one)
        assert one.read_tables() == agg.tables
        assert two.read_tables() == Tables()

        run_every_program(two)
        run_every_program(two)
        assert one.read_tables() == agg.tables
        for ev in events.values():
            agg.apply(ev)
        assert two.read_tables() == agg.tables


def test_close_is_idempotent_and_snapshot_after_close_fails() -> None:
    from pcpu_bpf.backends.bpf import BpfBackend

    b = BpfBackend(attach=False, kernel_stats=lambda: None)
    b.close()
    b.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        b.snapshot()
