"""Invariants of the allocator model over random operation sequences: bitmaps against
hints, page and empty-page counts, list membership, and the events replayed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcpu_bpf.model.events import (
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_KERNEL_ACCOUNT,
    GFP_NOWAIT,
    PercpuAlloc,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.chunk import Chunk
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S, Geometry

FULL = (1 << 1024) - 1
SIZES = [1, 4, 8, 12, 16, 24, 40, 64, 100, 260, 508, 1000, 1504, 4096, 5000, 8192, 16384, 32768]
ALIGNS = [0, 1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096]


@dataclass(frozen=True)
class Alloc:
    size: int
    align: int
    gfp: int
    reserved: bool


@dataclass(frozen=True)
class Free:
    pick: float  # which live allocation, as a fraction of the live list


@dataclass(frozen=True)
class Balance:
    pass


@dataclass(frozen=True)
class FailPopulate:
    pass


def runs(x: int) -> list[tuple[int, int]]:
    """Free runs (start, length) of a 1024-bit block."""
    f = ~x & FULL
    out = []
    while f:
        rs = (f & -f).bit_length() - 1
        t = f >> rs
        n = (t ^ (t + 1)).bit_length() - 1
        out.append((rs, n))
        f = (t >> n) << (rs + n)
    return out


def longest_chunk_run(c: Chunk) -> int:
    best = cur = 0
    for x in c.amap:
        if not x:
            cur += 1024
            best = max(best, cur)
            continue
        rs = runs(x)
        if rs and rs[0][0] == 0:
            best = max(best, cur + rs[0][1])
        else:
            best = max(best, cur)
        best = max([best] + [n for _, n in rs])
        cur = 1024 - x.bit_length()
    return max(best, cur)


def check_chunk(a: Allocator, c: Chunk) -> None:
    clear = sum(1024 - x.bit_count() for x in c.amap)
    assert c.free_bytes == 4 * clear
    empty = 0
    for k, (x, b) in enumerate(zip(c.amap, c.md_blocks, strict=True)):
        rs = runs(x)
        longest = max((n for _, n in rs), default=0)
        left = 1024 if not x else (x & -x).bit_length() - 1
        right = 1024 - x.bit_length()
        assert b.contig_hint <= longest, (k, b)
        assert b.right_free <= right, (k, b)
        assert b.left_free == left, (k, b)
        if rs:
            assert b.first_free == rs[0][0], (k, b)
        populated = c.populated >> k & 1
        if not populated:
            assert x == 0, f"unpopulated page {k} has allocations"
        elif x == 0:
            empty += 1
        # the model's skip masks must mirror the bitmap exactly
        assert (c.full_mask >> k & 1) == (x == FULL)
        assert (c.empty_mask >> k & 1) == (x == 0)
    assert c.nr_empty_pop_pages == empty
    assert c.nr_populated == c.populated.bit_count()
    assert c.chunk_md.contig_hint <= longest_chunk_run(c)


def check(a: Allocator, live: dict[int, tuple[int, int]]) -> None:
    listed = [c for _, c in a.chunk_lists()]
    assert len(listed) == len({id(c) for c in listed})
    for slot, c in a.chunk_lists():
        assert c.list_slot == slot
        assert c.isolated == (slot in (a.to_depopulate_slot, a.sidelined_slot))
    chunks = listed + ([a.reserved_chunk] if a.reserved_chunk else [])
    for c in chunks:
        check_chunk(a, c)
        assert c.nr_alloc == sum(1 for base, _ in live.values() if base == c.base_addr)
    assert a.nr_empty_pop_pages == sum(c.nr_empty_pop_pages for c in listed if not c.isolated)
    g = a.geometry
    boot = (g.static_size + g.reserved_size + g.dyn_size) // 4096
    dynamic = [c for c in listed if c is not a.first_chunk]
    assert a.nr_populated == boot + sum(c.nr_populated for c in dynamic)
    stats = a.percpu_stats().globals
    assert stats.nr_cur_alloc == len(live) == stats.nr_alloc - stats.nr_dealloc
    assert stats.nr_chunks == 1 + len(dynamic)


def replay_events(a: Allocator, since: int, live: dict[int, tuple[int, int]]) -> None:
    """Every free event matches a live allocation; alloc events start new ones."""
    for e in a.events[since:]:
        if isinstance(e, PercpuAlloc):
            assert e.ptr not in live
            assert e.ptr == (e.base_addr + e.off + a.per_cpu_delta) % 2**64
            live[e.ptr] = (e.base_addr, e.off)
        elif isinstance(e, PercpuFree):
            assert live.pop(e.ptr) == (e.base_addr, e.off)
        elif isinstance(e, PercpuCreateChunk):
            assert a.chunk_by_base(e.base_addr) is not None or any(
                isinstance(x, PercpuDestroyChunk) and x.base_addr == e.base_addr
                for x in a.events[since:]
            )


def run_ops(geometry: Geometry, ops: list[object]) -> None:
    a = Allocator(geometry)
    live: dict[int, tuple[int, int]] = {}
    ptrs: list[int] = []
    check(a, live)
    for op in ops:
        n = len(a.events)
        if isinstance(op, Alloc):
            p = a.alloc(op.size, op.align, gfp=op.gfp, reserved=op.reserved)
            if p is not None:
                ptrs.append(p)
        elif isinstance(op, Free):
            if ptrs:
                a.free(ptrs.pop(int(op.pick * len(ptrs))))
        elif isinstance(op, Balance):
            a.run_balance()
        else:
            a.fail_next_populate()
        replay_events(a, n, live)
        assert sorted(ptrs) == sorted(live)
        check(a, live)


RESERVED = st.sampled_from([False, False, False, True])
OPS = st.one_of(
    st.builds(
        Alloc,
        st.sampled_from(SIZES),
        st.sampled_from(ALIGNS),
        st.sampled_from([GFP_KERNEL, GFP_KERNEL, GFP_KERNEL_ACCOUNT, GFP_ATOMIC, GFP_NOWAIT]),
        RESERVED,
    ),
    st.builds(Free, st.floats(0, 1, exclude_max=True)),
    st.builds(Free, st.floats(0, 1, exclude_max=True)),
    st.just(Balance()),
    st.just(FailPopulate()),
)

# Biased towards big requests so the small configuration creates, fills, isolates,
# sidelines and destroys chunks within a short sequence.
BIG_OPS = st.one_of(
    st.builds(
        Alloc,
        st.sampled_from([4096, 8192, 16384, 24576, 32768, 100, 8]),
        st.sampled_from([4, 8, 4096]),
        st.sampled_from([GFP_KERNEL, GFP_KERNEL, GFP_ATOMIC]),
        RESERVED,
    ),
    st.builds(Free, st.floats(0, 1, exclude_max=True)),
    st.just(Balance()),
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("geometry", [CONFIG_L, CONFIG_S], ids=["reference", "small"])
@SETTINGS
@given(ops=st.lists(OPS, min_size=20, max_size=120))
def test_invariants_mixed(geometry: Geometry, ops: list[object]) -> None:
    run_ops(geometry, ops)


@SETTINGS
@given(ops=st.lists(BIG_OPS, min_size=30, max_size=150))
def test_invariants_chunk_life_cycle_small_config(ops: list[object]) -> None:
    run_ops(CONFIG_S, ops)


def test_invariants_long_seeded_run() -> None:
    """One long deterministic run on each configuration, beyond hypothesis' short lists."""
    for geometry in (CONFIG_L, CONFIG_S):
        rng = random.Random(7)
        ops: list[object] = []
        for _ in range(600):
            r = rng.random()
            if r < 0.45:
                gfp = rng.choice([GFP_KERNEL, GFP_ATOMIC])
                reserved = rng.random() < 0.05
                ops.append(Alloc(rng.choice(SIZES), rng.choice(ALIGNS), gfp, reserved))
            elif r < 0.93:
                ops.append(Free(rng.random()))
            elif r < 0.99:
                ops.append(Balance())
            else:
                ops.append(FailPopulate())
        run_ops(geometry, ops)
