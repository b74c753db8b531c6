"""The reference aggregator: the semantics the BPF programs must reproduce."""

from __future__ import annotations

import pytest

from pcpu_bpf.model.aggregation import Aggregator
from pcpu_bpf.model.events import (
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.layout import SIZE_BUCKETS, size_slot
from pcpu_bpf.model.snapshot import SiteKey, SiteRecord
from pcpu_bpf.model.tables import SnapshotContext

SYMS = {0x1000: "mm_init", 0x1010: "mm_init", 0x2000: "ipv4_mib_init_net"}
CTX = SnapshotContext(backend="test", kernel="6.18", timestamp=0.0, nr_units=2)
# A kernel before 5.19: no bytes_alloc, so no memcg extension is known.
OLD_CTX = SnapshotContext(
    backend="test", kernel="5.15", timestamp=0.0, nr_units=2, memcg_extension=False
)


def symbolize(addr: int) -> str:
    return SYMS.get(addr, f"{addr:#018x}")


def alloc(
    ptr: int,
    size: int = 16,
    site: int | None = 0x1000,
    *,
    atomic: bool = False,
    reserved: bool = False,
    bytes_alloc: int | None = -1,
) -> PercpuAlloc:
    return PercpuAlloc(
        call_site=site,
        reserved=reserved,
        is_atomic=atomic,
        size=size,
        align=8,
        base_addr=0xFFFFE8FFFFC00000,
        off=ptr & 0xFFFF,
        ptr=ptr,
        bytes_alloc=4 * size if bytes_alloc == -1 else bytes_alloc,
        gfp_flags=0xCC0,
    )


def free(ptr: int) -> PercpuFree:
    return PercpuFree(base_addr=0xFFFFE8FFFFC00000, off=ptr & 0xFFFF, ptr=ptr)


def aggregate(events, ctx=CTX, **kw):
    agg = Aggregator(symbolize, possible_cpus=2, **kw)
    for event in events:
        agg.apply(event)
    return agg.snapshot(ctx)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [(1, 0), (4, 0), (5, 1), (8, 1), (9, 2), (16, 2), (4096, 10), (32768, 13), (32769, 14)],
)
def test_size_slot_is_log2_upper_bound(size: int, bucket: int) -> None:
    assert size_slot(size) == bucket
    if bucket < len(SIZE_BUCKETS):
        assert size <= SIZE_BUCKETS[bucket]


def test_alloc_then_free_balances_exactly() -> None:
    # Percpu bytes are the size on each of the 2 units; bytes_alloc (4 x size here) adds
    # the memcg extension beyond size x 2 possible CPUs, counted apart for live ones.
    snap = aggregate([alloc(1, 16), alloc(2, 100), free(1)])
    assert snap.sites == {SiteKey("mm_init"): SiteRecord(2, 116, 232, 1, 32, 1, 200, 200)}
    s = snap.by_call_site["mm_init"]
    assert s.allocated_bytes - s.freed_bytes == s.live_bytes


def test_units_are_what_percpu_bytes_count() -> None:
    # 3 possible CPUs in allocations of 2 units: 4 units, each holding a copy.
    agg = Aggregator(symbolize, possible_cpus=3)
    agg.apply(alloc(1, 16, bytes_alloc=16 * 3 + 32))
    ctx = SnapshotContext(backend="test", kernel="6.18", timestamp=0.0, nr_units=4)
    record = agg.snapshot(ctx).sites[SiteKey("mm_init")]
    assert (record.live_bytes, record.memcg_extension_bytes) == (64, 32)


def test_sizes_kept_in_32_bits_keep_live_exact() -> None:
    # pcpu_alloc() never reports more than 32 KiB; a live entry keeps 32 bits, and the
    # counts add what it keeps, so allocated - freed = live holds for any event.
    huge = (1 << 33) + 8
    snap = aggregate([alloc(1, huge, bytes_alloc=huge * 2), alloc(2, 8), free(1)])
    s = snap.by_call_site["mm_init"]
    assert (s.requested_bytes, s.live_bytes) == (16, 16)
    assert s.allocated_bytes - s.freed_bytes == s.live_bytes
    assert snap.size_histogram.sum == huge + 8  # the histogram sees the event's size


def test_live_entries_keep_their_allocation_time() -> None:
    now = [5.0]
    agg = Aggregator(symbolize, possible_cpus=2, clock=lambda: now[0])
    agg.apply(alloc(1))
    now[0] = 9.0
    agg.apply(alloc(2))
    assert sorted(e.alloc_time for e in agg.live_entries()) == [5.0, 9.0]


def test_addresses_in_one_function_fold_into_one_label() -> None:
    snap = aggregate([alloc(1, site=0x1000), alloc(2, site=0x1010), alloc(3, site=0x2000)])
    assert list(snap.by_call_site) == ["ipv4_mib_init_net", "mm_init"]
    assert snap.sites[SiteKey("mm_init")].allocations == 2


def test_labels_split_by_atomic_and_reserved() -> None:
    snap = aggregate([alloc(1), alloc(2, atomic=True), alloc(3, reserved=True)])
    assert set(snap.sites) == {
        SiteKey("mm_init", False, False),
        SiteKey("mm_init", True, False),
        SiteKey("mm_init", False, True),
    }
    assert snap.by_call_site["mm_init"].live_allocations == 3


def test_free_of_unknown_pointer_is_untracked() -> None:
    snap = aggregate([free(7), free(8)])
    assert snap.sites == {}
    assert snap.untracked_frees == 2


def test_kernel_without_call_site_or_bytes_alloc() -> None:
    # Pre-5.19 kernels: site "unknown", no memcg extension known.
    snap = aggregate([alloc(1, 24, site=None, bytes_alloc=None)], OLD_CTX)
    assert snap.sites == {SiteKey("unknown"): SiteRecord(1, 24, 48, 0, 0, 1, 48, None)}


def test_histograms_failures_and_chunks() -> None:
    snap = aggregate(
        [
            alloc(1, 16),
            alloc(2, 3000),
            PercpuAllocFail(reserved=False, is_atomic=True, size=32768, align=8),
            PercpuCreateChunk(base_addr=1),
            PercpuCreateChunk(base_addr=2),
            PercpuDestroyChunk(base_addr=1),
        ]
    )
    assert snap.size_histogram.counts[size_slot(16)] == 1
    assert snap.size_histogram.counts[size_slot(3000)] == 1
    assert snap.size_histogram.sum == 3016
    assert snap.failures == {
        (False, False): 0,
        (False, True): 0,
        (True, False): 1,
        (True, True): 0,
    }
    assert snap.failed_size_histogram.counts[size_slot(32768)] == 1
    assert (snap.chunk_creations, snap.chunk_destructions) == (2, 1)


def test_full_live_table_drops_new_entries_and_keeps_counts() -> None:
    snap = aggregate([alloc(p) for p in range(1, 6)] + [free(5)], live_capacity=3)
    assert snap.dropped["live_table_full"] == 2
    assert snap.sites[SiteKey("mm_init")].allocations == 5
    # Pointers 4 and 5 were never tracked: the free of 5 is untracked.
    assert snap.sites[SiteKey("mm_init")].live_allocations == 3
    assert snap.untracked_frees == 1


def test_full_site_table_drops_the_allocation() -> None:
    snap = aggregate([alloc(1, site=0x1000), alloc(2, site=0x2000), free(2)], site_capacity=1)
    assert snap.dropped == {"live_table_full": 0, "site_table_full": 1, "chunk_table_full": 0}
    assert list(snap.by_call_site) == ["mm_init"]
    assert snap.untracked_frees == 1


def test_known_series_exist_before_any_event() -> None:
    snap = aggregate([])
    assert set(snap.failures) == {(a, r) for a in (False, True) for r in (False, True)}
    assert snap.dropped == {"live_table_full": 0, "site_table_full": 0, "chunk_table_full": 0}
    assert snap.size_histogram.count == 0
