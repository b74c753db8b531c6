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
CTX = SnapshotContext(backend="test", kernel="6.18", timestamp=0.0)


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


def aggregate(events, **kw):
    agg = Aggregator(symbolize, possible_cpus=2, **kw)
    for event in events:
        agg.apply(event)
    return agg.snapshot(CTX)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [(1, 0), (4, 0), (5, 1), (8, 1), (9, 2), (16, 2), (4096, 10), (32768, 13), (32769, 14)],
)
def test_size_slot_is_log2_upper_bound(size: int, bucket: int) -> None:
    assert size_slot(size) == bucket
    if bucket < len(SIZE_BUCKETS):
        assert size <= SIZE_BUCKETS[bucket]


def test_alloc_then_free_balances_exactly() -> None:
    snap = aggregate([alloc(1, 16), alloc(2, 100), free(1)])
    assert snap.sites == {SiteKey("mm_init"): SiteRecord(2, 116, 464, 1, 64, 1, 400)}
    s = snap.by_call_site["mm_init"]
    assert s.allocated_bytes - s.freed_bytes == s.live_bytes


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
    # Pre-5.19 kernels: site "unknown", memory used = size x possible CPUs.
    snap = aggregate([alloc(1, 24, site=None, bytes_alloc=None)])
    assert snap.sites == {SiteKey("unknown"): SiteRecord(1, 24, 48, 0, 0, 1, 48)}


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
    assert snap.dropped == {"live_table_full": 0, "site_table_full": 1}
    assert list(snap.by_call_site) == ["mm_init"]
    assert snap.untracked_frees == 1


def test_known_series_exist_before_any_event() -> None:
    snap = aggregate([])
    assert set(snap.failures) == {(a, r) for a in (False, True) for r in (False, True)}
    assert snap.dropped == {"live_table_full": 0, "site_table_full": 0}
    assert snap.size_histogram.count == 0
