"""The allocator simulator on short request sequences whose outcome follows from mm/percpu.c.

Each case pins the exact events, block and chunk hints, slot lists, page counts and
percpu_stats the kernel's code gives for its sequence of requests.
"""

from __future__ import annotations

import dataclasses

import pytest

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.kernel.percpu_stats import (
    CHUNK_FIRST,
    CHUNK_NORMAL,
    CHUNK_RESERVED,
    CHUNK_SIDELINED,
    CHUNK_TO_DEPOPULATE,
    ChunkStats,
)
from pcpu_bpf.model.events import (
    GFP_ACCOUNT,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_KERNEL_ACCOUNT,
    GFP_NOWAIT,
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.sim.allocator import Allocator, BalancePolicy
from pcpu_bpf.sim.chunk import BlockMd, Chunk
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S, Geometry

D = 0x77795BEF9000
# Dynamic chunks' bases, as the live reference machine gives them: vm areas of
# nr_units * unit_size (no guard page), stacked down from VMALLOC_END rounded to the atom.
V1_L = 0xFFFFE8FFFFC00000
V2_L = 0xFFFFE8FFFFA00000
TOP_S = 0xFFFFE8FFFFFFF000  # VMALLOC_END rounded down to the small machine's 4 KiB atom
SPAN_S = 0x40000  # 4 units x 64 KiB


def hint(b: BlockMd) -> tuple[int, int]:
    """(contig_hint, contig_hint_start): 'contig a@b' in the comments."""
    return b.contig_hint, b.contig_hint_start


def scan(b: BlockMd) -> tuple[int, int]:
    """(scan_hint, scan_hint_start): 'scan a@b' in the comments."""
    return b.scan_hint, b.scan_hint_start


def alloc_ev(
    a: Allocator,
    c: Chunk,
    off: int,
    size: int,
    align: int,
    *,
    reserved: bool = False,
    gfp: int = GFP_KERNEL,
) -> PercpuAlloc:
    """The full alloc event the kernel would emit for (chunk, off)."""
    return PercpuAlloc(
        call_site=0,
        reserved=reserved,
        is_atomic=not gfp & 0x400,
        size=size,
        align=align,
        base_addr=c.base_addr,
        off=off,
        ptr=(c.base_addr + off + D) % 2**64,
        bytes_alloc=a.geometry.bytes_alloc(size),
        gfp_flags=gfp,
    )


def free_ev(c: Chunk, off: int) -> PercpuFree:
    return PercpuFree(c.base_addr, off, (c.base_addr + off + D) % 2**64)


def chunk_stats(a: Allocator, c: Chunk) -> ChunkStats:
    """The percpu_stats block printed for chunk c."""
    stats = a.percpu_stats()
    order = ([a.reserved_chunk] if a.reserved_chunk else []) + [x for _, x in a.chunk_lists()]
    return stats.chunks[[x is c for x in order].index(True)]


def frag(cs: ChunkStats) -> dict[str, int]:
    return {k: v for k, v in dataclasses.asdict(cs).items() if k != "kind"}


def new_events(a: Allocator, since: int) -> list[Event]:
    return a.events[since:]


def chunk_at(a: Allocator, base: int) -> Chunk:
    c = a.chunk_by_base(base)
    assert c is not None
    return c


def created(a: Allocator) -> list[Chunk]:
    """Dynamic chunks in creation order (V1, V2, ...), live ones only."""
    bases = [e.base_addr for e in a.events if isinstance(e, PercpuCreateChunk)]
    return [c for b in bases if (c := a.chunk_by_base(b)) is not None]


EMPTY_BLOCK = {
    "contig_hint": 1024,
    "contig_hint_start": 0,
    "scan_hint": 0,
    "left_free": 1024,
    "right_free": 1024,
    "first_free": 0,
}


# ---- boot state ----------------------------------------------------------------------


def test_boot_state_of_the_reference_machine() -> None:
    a = Allocator(CONFIG_L)
    fc = a.first_chunk
    assert a.events == []  # the boot create_chunk(B) predates tracing
    assert fc.base_addr == a.pcpu_base_addr + 0x2D000
    assert (fc.nr_pages, fc.start_offset, fc.end_offset, fc.free_bytes) == (8, 1240, 0, 31528)
    assert hint(fc.chunk_md) == (7882, 310)
    assert (fc.list_slot, a.chunk_slot(fc), fc.nr_empty_pop_pages) == (12, 12, 7)
    assert (a.sidelined_slot, a.free_slot, a.to_depopulate_slot, a.nr_slots) == (19, 20, 21, 22)
    assert (a.nr_empty_pop_pages, a.nr_populated, a.meminfo_percpu_kb()) == (7, 53, 424)
    b0 = fc.md_blocks[0]
    assert (hint(b0), b0.left_free, b0.right_free, b0.first_free) == ((714, 310), 0, 714, 310)
    for b in fc.md_blocks[1:]:
        assert {k: b.as_dict()[k] for k in EMPTY_BLOCK} == EMPTY_BLOCK
    s = a.percpu_stats()
    assert s.globals.nr_chunks == s.globals.nr_max_chunks == 1
    assert (s.globals.min_alloc_size, s.globals.max_alloc_size) == (1048576, 0)
    assert s.globals.empty_pop_pages == 7
    assert s.globals.nr_alloc == s.globals.nr_dealloc == s.globals.nr_cur_alloc == 0
    assert s.chunks == (ChunkStats(CHUNK_FIRST, 0, 0, 7, 310, 31528, 31528, 0, 0, 0, 0, 0),)
    assert (s.info.unit_size, s.info.static_size, s.info.dyn_size) == (1 << 20, 185560, 31528)


def test_boot_state_of_the_small_machine_with_a_reserved_chunk() -> None:
    a = Allocator(CONFIG_S)
    rc, fc = a.reserved_chunk, a.first_chunk
    assert rc is not None and a.events == []
    assert rc.base_addr == a.pcpu_base_addr + 0x9000
    assert fc.base_addr == a.pcpu_base_addr + 0xA000
    assert (rc.nr_pages, rc.start_offset, rc.end_offset) == (2, 3136, 960)
    assert rc.list_slot is None and rc.nr_empty_pop_pages == 0
    assert (fc.nr_pages, fc.start_offset, fc.end_offset, fc.list_slot) == (6, 3136, 0, 12)
    assert hint(fc.chunk_md) == (5360, 784)
    assert (a.sidelined_slot, a.free_slot, a.to_depopulate_slot, a.nr_slots) == (15, 16, 17, 18)
    assert (a.nr_empty_pop_pages, a.nr_populated) == (5, 16)
    b0, b1 = rc.md_blocks
    assert (hint(b0), b0.right_free) == ((240, 784), 240)
    assert (hint(b1), b1.left_free, b1.right_free) == ((784, 0), 784, 0)
    assert hint(rc.chunk_md) == (1024, 784)
    s = a.percpu_stats()
    assert s.chunks == (
        ChunkStats(CHUNK_RESERVED, 0, 0, 0, 784, 4096, 4096, 0, 0, 0, 0, 0),
        ChunkStats(CHUNK_FIRST, 0, 0, 5, 784, 21440, 21440, 0, 0, 0, 0, 0),
    )
    assert (s.globals.min_alloc_size, s.globals.empty_pop_pages) == (65536, 5)


# ---- first fit, alignment, scan hints, fragment walk ---------------------------------


def test_first_fit_alignment_and_scan_hints() -> None:
    a = Allocator(CONFIG_L)
    fc = a.first_chunk
    A = a.alloc(8, 8)
    B = a.alloc(4, 4)
    C = a.alloc(16, 16)
    b0, m = fc.md_blocks[0], fc.chunk_md
    assert (scan(b0), hint(b0)) == ((3, 313), (704, 320))
    assert (hint(m), m.scan_hint, m.first_free) == ((7872, 320), 0, 313)
    D_ = a.alloc(4, 4)
    assert B is not None and D_ is not None
    a.free(B)
    assert (scan(m), m.first_free) == ((1, 312), 312)
    a.alloc(8, 4)  # E
    a.alloc(4, 4)  # F
    a.alloc(2000, 64)  # G
    a.free(D_)
    assert A is not None and C is not None
    assert a.events == [
        alloc_ev(a, fc, 1240, 8, 8),
        alloc_ev(a, fc, 1248, 4, 4),
        alloc_ev(a, fc, 1264, 16, 16),
        alloc_ev(a, fc, 1252, 4, 4),
        free_ev(fc, 1248),
        alloc_ev(a, fc, 1256, 8, 4),
        alloc_ev(a, fc, 1248, 4, 4),
        alloc_ev(a, fc, 1280, 2000, 64),
        free_ev(fc, 1252),
    ]
    assert [e.bytes_alloc for e in a.events if isinstance(e, PercpuAlloc)][:3] == [32, 16, 64]
    assert a.events[-2].bytes_alloc == 8000  # type: ignore[union-attr]
    s = a.percpu_stats()
    assert frag(s.chunks[0]) == dict(
        nr_alloc=5,
        max_alloc_size=2000,
        empty_pop_pages=7,
        first_bit=313,
        free_bytes=29492,
        contig_bytes=29488,
        sum_frag=4,
        max_frag=4,
        cur_min_alloc=4,
        cur_med_alloc=8,
        cur_max_alloc=2000,
    )
    g = s.globals
    assert (g.nr_alloc, g.nr_dealloc, g.nr_cur_alloc, g.nr_max_alloc) == (7, 2, 5, 6)
    assert (g.min_alloc_size, g.max_alloc_size, g.empty_pop_pages) == (4, 2000, 7)
    assert (hint(m), scan(m), m.first_free) == ((7372, 820), (1, 313), 313)
    assert (hint(b0), scan(b0), b0.first_free) == ((204, 820), (1, 313), 313)


# ---- argument normalisation and silent rejection -------------------------------------

NORMALISATION_CALLS = [
    # (size, align, expected: None = rejected silently, else (chunk, off, size, align))
    (0, 8, None),
    (1, 1, ("FC", 1240, 4, 4)),
    (6, 2, ("FC", 1244, 8, 4)),
    (8, 0, ("FC", 1252, 8, 4)),
    (8, 3, ("FC", 1260, 8, 4)),
    (8, 6, None),
    (8, 8192, None),
    (32769, 4, None),
    (32768, 4096, ("V1", 0, 32768, 4096)),
    (12, 4096, ("FC", 4096, 12, 4096)),
]


def test_size_and_align_normalisation_and_silent_rejection() -> None:
    a = Allocator(CONFIG_L)
    fc = a.first_chunk
    for size, align, want in NORMALISATION_CALLS:
        n = len(a.events)
        ptr = a.alloc(size, align)
        got = new_events(a, n)
        if want is None:
            assert ptr is None and got == [] and a.last_rejection
            continue
        assert a.last_rejection is None
        name, off, rsize, ralign = want
        if name == "V1":
            assert got[0] == PercpuCreateChunk(V1_L)
            c = chunk_at(a, V1_L)
            got = got[1:]
            assert a.balance_pending  # global went 7 -> -1 before population
        else:
            c = fc
        assert got == [alloc_ev(a, c, off, rsize, ralign)]
        assert got[0].bytes_alloc == 4 * rsize  # type: ignore[union-attr]
    v1 = chunk_at(a, V1_L)
    assert (a.nr_empty_pop_pages, a.nr_populated, a.percpu_stats().globals.nr_chunks) == (6, 61, 2)
    assert (v1.list_slot, hint(v1.chunk_md)) == (17, (253952, 8192))
    assert (v1.populated_pages(), v1.nr_empty_pop_pages) == (list(range(8)), 0)
    assert frag(chunk_stats(a, fc)) == dict(
        nr_alloc=5,
        max_alloc_size=12,
        empty_pop_pages=6,
        first_bit=317,
        free_bytes=31488,
        contig_bytes=28660,
        sum_frag=2828,
        max_frag=2828,
        cur_min_alloc=4,
        cur_med_alloc=8,
        cur_max_alloc=12,
    )
    assert (hint(fc.chunk_md), scan(fc.chunk_md)) == ((7165, 1027), (707, 317))


# ---- chunk creation, free to the free slot -------------------------------------------


def test_chunk_creation_and_free_to_the_free_slot() -> None:
    a = Allocator(CONFIG_L)
    fc = a.first_chunk
    X = a.alloc(32768, 8)
    v1 = chunk_at(a, V1_L)
    assert a.events == [PercpuCreateChunk(V1_L), alloc_ev(a, v1, 0, 32768, 8)]
    assert a.events[1].bytes_alloc == 131072  # type: ignore[union-attr]
    assert (v1.populated_pages(), v1.nr_empty_pop_pages, v1.list_slot) == (list(range(8)), 0, 17)
    assert a.nr_empty_pop_pages == 7 and a.balance_pending
    a.alloc(4, 4)
    assert a.events[-1] == alloc_ev(a, fc, 1240, 4, 4)  # slot 12 before slot 17
    a._balance_pending = False  # observe what the free alone requests
    assert X is not None
    a.free(X)
    assert a.events[-1] == free_ev(v1, 0)
    assert not a.balance_pending
    assert a.lists[20] == [v1] and v1.nr_empty_pop_pages == 8 and a.nr_empty_pop_pages == 15
    s = a.percpu_stats()
    g = s.globals
    assert (g.nr_alloc, g.nr_dealloc, g.nr_cur_alloc, g.nr_max_alloc, g.nr_chunks) == (
        2,
        1,
        1,
        2,
        2,
    )
    assert (g.min_alloc_size, g.max_alloc_size, g.empty_pop_pages) == (4, 32768, 15)
    assert [c.kind for c in s.chunks] == [CHUNK_FIRST, CHUNK_NORMAL]
    assert s.chunks[1] == ChunkStats(CHUNK_NORMAL, 0, 32768, 8, 0, 1 << 20, 1 << 20, 0, 0, 0, 0, 0)


# ---- low empty pages -> balance creates and populates a chunk ------------------------


def test_low_empty_pages_make_balance_create_and_populate() -> None:
    a = Allocator(CONFIG_L)
    fc = a.first_chunk
    a.alloc(28672, 4)
    assert a.events == [alloc_ev(a, fc, 1240, 28672, 4)]
    assert (fc.nr_empty_pop_pages, a.nr_empty_pop_pages, a.balance_pending) == (0, 0, True)
    assert (hint(fc.chunk_md), fc.list_slot) == ((714, 7478), 9)
    a.run_balance()
    v1 = chunk_at(a, V1_L)
    assert a.events[1:] == [PercpuCreateChunk(V1_L)]
    assert (a.nr_empty_pop_pages, a.nr_populated, a.percpu_stats().globals.nr_chunks) == (4, 57, 2)
    assert (v1.nr_populated, v1.nr_empty_pop_pages, v1.populated_pages()) == (4, 4, [0, 1, 2, 3])
    assert v1.list_slot == a.free_slot and not a.balance_pending


# ---- atomic allocations and the atomic-failure feedback loop -------------------------


@pytest.mark.parametrize("gfp", [GFP_ATOMIC, GFP_NOWAIT])
def test_atomic_failures_make_balance_populate_more(gfp: int) -> None:
    a = Allocator(CONFIG_L)
    fail = PercpuAllocFail(reserved=False, is_atomic=True, size=32768, align=8)
    assert a.alloc(32768, 8, gfp=gfp) is None
    assert a.events == [fail] and a.atomic_alloc_failed and a.balance_pending
    a.run_balance()
    v1 = chunk_at(a, V1_L)
    assert a.events[1:] == [PercpuCreateChunk(V1_L)]
    assert v1.nr_populated == 0 and not a.atomic_alloc_failed  # retry: clamp(4 - 7) = 0
    assert a.alloc(32768, 8, gfp=gfp) is None and a.events[-1] == fail and a.balance_pending
    a.run_balance()
    assert (v1.populated_pages(), a.nr_empty_pop_pages) == ([0, 1, 2, 3], 11)
    assert a.alloc(32768, 8, gfp=gfp) is None and a.events[-1] == fail
    a.run_balance()
    assert (v1.populated_pages(), a.nr_empty_pop_pages) == (list(range(8)), 15)
    n = len(a.events)
    assert a.alloc(32768, 8, gfp=gfp) is not None
    assert new_events(a, n) == [alloc_ev(a, v1, 0, 32768, 8, gfp=gfp)]
    assert a.events[-1].is_atomic  # type: ignore[union-attr]
    assert (v1.nr_populated, v1.nr_empty_pop_pages, a.nr_empty_pop_pages) == (8, 0, 7)
    assert not a.balance_pending


# ---- destroying a surplus free chunk -------------------------------------------------


def test_balance_destroys_a_surplus_free_chunk() -> None:
    a = Allocator(CONFIG_S)
    fc = a.first_chunk
    a.alloc(21440, 4)
    assert a.events == [alloc_ev(a, fc, 3136, 21440, 4)]
    assert a.nr_empty_pop_pages == 0 and a.balance_pending
    X1, X2 = a.alloc(32768, 8), a.alloc(32768, 8)
    v1_base = TOP_S - SPAN_S
    v1 = chunk_at(a, v1_base)
    assert a.events[1:] == [
        PercpuCreateChunk(v1_base),
        alloc_ev(a, v1, 0, 32768, 8),
        alloc_ev(a, v1, 32768, 32768, 8),
    ]
    assert v1.list_slot == 0 and (a.nr_populated, a.nr_empty_pop_pages) == (32, 0)
    a.run_balance()
    v2_base = TOP_S - 2 * SPAN_S
    v2 = chunk_at(a, v2_base)
    assert a.events[4:] == [PercpuCreateChunk(v2_base)]
    assert (v2.populated_pages(), a.nr_empty_pop_pages, v2.list_slot) == ([0, 1, 2, 3], 4, 16)
    assert X1 is not None and X2 is not None
    a.free(X1)
    assert (v1.nr_empty_pop_pages, a.nr_empty_pop_pages, v1.isolated) == (8, 12, False)
    assert not a.balance_pending
    a.free(X2)
    assert a.lists[a.free_slot] == [v1, v2] and a.balance_pending
    a.run_balance()
    assert a.events[5:] == [free_ev(v1, 0), free_ev(v1, 32768), PercpuDestroyChunk(v2_base)]
    g = a.percpu_stats().globals
    assert (g.nr_chunks, g.nr_max_chunks, g.empty_pop_pages, a.nr_populated) == (2, 3, 16, 32)
    assert a.lists[a.free_slot] == [v1] and v1.nr_empty_pop_pages == 16
    assert v1.nr_populated == 16


# ---- reclaim interplay keeps two free chunks -----------------------------------------


def test_reclaim_interplay_keeps_two_free_chunks() -> None:
    a = Allocator(CONFIG_S)
    X1, X2, X3 = (a.alloc(32768, 8) for _ in range(3))
    v1_base, v2_base = TOP_S - SPAN_S, TOP_S - 2 * SPAN_S
    v1, v2 = chunk_at(a, v1_base), chunk_at(a, v2_base)
    assert a.events == [
        PercpuCreateChunk(v1_base),
        alloc_ev(a, v1, 0, 32768, 8),
        alloc_ev(a, v1, 32768, 32768, 8),
        PercpuCreateChunk(v2_base),
        alloc_ev(a, v2, 0, 32768, 8),
    ]
    a._balance_pending = False
    assert X1 is not None and X2 is not None and X3 is not None
    a.free(X1)
    assert v1.isolated and a.lists[a.to_depopulate_slot] == [v1] and a.balance_pending
    assert (v1.nr_empty_pop_pages, a.nr_empty_pop_pages) == (8, 5)
    assert chunk_stats(a, v1).kind == CHUNK_TO_DEPOPULATE
    a.free(X2)
    assert a.lists[a.to_depopulate_slot] == [v1]
    a.free(X3)
    assert a.lists[a.free_slot] == [v2]
    assert (a.nr_empty_pop_pages, v1.nr_empty_pop_pages) == (13, 16)
    n = len(a.events)
    a.run_balance()
    assert new_events(a, n) == []
    assert a.lists[a.free_slot] == [v1, v2] and not v1.isolated
    assert (v1.nr_populated, v2.nr_empty_pop_pages, a.nr_populated) == (0, 8, 24)
    assert a.nr_empty_pop_pages == 13
    a.run_balance()
    assert new_events(a, n) == [PercpuDestroyChunk(v2_base)]
    g = a.percpu_stats().globals
    assert (g.empty_pop_pages, a.nr_populated, g.nr_chunks) == (5, 16, 2)


# ---- reserved chunk, and reserved without one ----------------------------------------


def test_reserved_chunk_allocations_and_stale_hint() -> None:
    a = Allocator(CONFIG_S)
    rc = a.reserved_chunk
    assert rc is not None
    R1 = a.alloc(100, 8, reserved=True)
    assert a.events == [alloc_ev(a, rc, 3136, 100, 8, reserved=True)]
    assert a.events[0].bytes_alloc == 600  # type: ignore[union-attr]
    assert a.alloc(4000, 4, reserved=True) is None
    assert a.events[-1] == PercpuAllocFail(reserved=True, is_atomic=False, size=4000, align=4)
    assert R1 is not None
    a.free(R1)
    assert a.events[-1] == free_ev(rc, 3136)
    assert a.alloc(4096, 4, reserved=True) is None  # stale chunk hint refuses it
    assert a.events[-1] == PercpuAllocFail(reserved=True, is_atomic=False, size=4096, align=4)
    assert not any(isinstance(e, PercpuCreateChunk) for e in a.events)
    assert (hint(rc.chunk_md), scan(rc.chunk_md)) == ((999, 809), (240, 784))
    s = a.percpu_stats()
    assert s.chunks[0] == ChunkStats(CHUNK_RESERVED, 0, 100, 0, 784, 4096, 3996, 0, 0, 0, 0, 0)
    g = s.globals
    assert (g.nr_alloc, g.nr_dealloc, g.min_alloc_size, g.max_alloc_size) == (1, 1, 100, 100)
    assert g.empty_pop_pages == 5  # reserved allocations never touch the global count


def test_reserved_request_without_a_reserved_chunk() -> None:
    a = Allocator(CONFIG_L)
    assert a.alloc(16, 8, reserved=True) is not None
    assert a.events == [alloc_ev(a, a.first_chunk, 1240, 16, 8, reserved=True)]


# ---- stale chunk hint, fail-threshold parking, last-bit quirk ------------------------


def test_stale_hint_fail_threshold_parking_and_last_bit() -> None:
    a = Allocator(CONFIG_S)
    fc, rc = a.first_chunk, a.reserved_chunk
    a.alloc(21440, 4)
    assert fc.list_slot == 0
    sizes = [32768, 16384, 8192, 4096, 2048, 1024, 512, 508]
    ptrs = [a.alloc(sz, 4) for sz in sizes]
    v1_base = TOP_S - SPAN_S
    v1 = chunk_at(a, v1_base)
    offs = [0, 32768, 49152, 57344, 61440, 63488, 64512, 65024]
    assert a.events[1:] == [PercpuCreateChunk(v1_base)] + [
        alloc_ev(a, v1, o, sz, 4) for o, sz in zip(offs, sizes, strict=True)
    ]
    assert (v1.free_bytes, hint(v1.chunk_md), v1.list_slot) == (4, (1, 16383), 1)
    x6 = ptrs[5]
    assert x6 is not None
    a.free(x6)
    assert (v1.free_bytes, hint(v1.chunk_md), v1.list_slot) == (1028, (1, 16383), 1)
    assert frag(chunk_stats(a, v1)) == dict(
        nr_alloc=7,
        max_alloc_size=32768,
        empty_pop_pages=0,
        first_bit=15872,
        free_bytes=1028,
        contig_bytes=4,
        sum_frag=1024,
        max_frag=1024,
        cur_min_alloc=508,
        cur_med_alloc=4096,
        cur_max_alloc=32768,
    )
    assert hint(v1.md_blocks[15]) == (256, 512)
    n = len(a.events)
    a.alloc(512, 4)  # search starts at slot 7: V1 in slot 1 is not looked at
    v2_base = TOP_S - 2 * SPAN_S
    v2 = chunk_at(a, v2_base)
    assert new_events(a, n) == [PercpuCreateChunk(v2_base), alloc_ev(a, v2, 0, 512, 4)]
    a.alloc(8, 4)  # V1 fails find_block_fit and is parked at the head of slot 0
    assert a.events[-1] == alloc_ev(a, v2, 512, 8, 4)
    assert a.lists[0] == [v1, fc] and v2.list_slot == 13
    s = a.percpu_stats()
    assert [c.kind for c in s.chunks] == [CHUNK_RESERVED, CHUNK_NORMAL, CHUNK_FIRST, CHUNK_NORMAL]
    assert rc is not None and chunk_stats(a, rc).kind == CHUNK_RESERVED
    assert frag(chunk_stats(a, fc)) == dict(
        nr_alloc=1,
        max_alloc_size=21440,
        empty_pop_pages=0,
        first_bit=6144,
        free_bytes=0,
        contig_bytes=0,
        sum_frag=0,
        max_frag=0,
        cur_min_alloc=21436,
        cur_med_alloc=21436,
        cur_max_alloc=21436,
    )
    assert frag(chunk_stats(a, v2)) == dict(
        nr_alloc=2,
        max_alloc_size=512,
        empty_pop_pages=0,
        first_bit=130,
        free_bytes=65016,
        contig_bytes=65016,
        sum_frag=0,
        max_frag=0,
        cur_min_alloc=8,
        cur_med_alloc=8,
        cur_max_alloc=512,
    )
    g = s.globals
    assert (g.nr_alloc, g.nr_dealloc, g.nr_cur_alloc, g.nr_max_alloc, g.nr_chunks) == (
        11,
        1,
        10,
        10,
        3,
    )
    assert (g.min_alloc_size, g.max_alloc_size, g.empty_pop_pages) == (8, 32768, 0)


# ---- reclaim -> to_depopulate -> sidelined -> reuse ----------------------------------


def test_reclaim_sidelines_a_chunk_that_is_then_reused() -> None:
    a = Allocator(CONFIG_S)
    x1 = a.alloc(32768, 8)
    a.alloc(24576, 8)
    v1_base = TOP_S - SPAN_S
    v1 = chunk_at(a, v1_base)
    assert a.events == [
        PercpuCreateChunk(v1_base),
        alloc_ev(a, v1, 0, 32768, 8),
        alloc_ev(a, v1, 32768, 24576, 8),
    ]
    assert (v1.populated_pages(), v1.list_slot, a.nr_empty_pop_pages) == (list(range(14)), 11, 5)
    a._balance_pending = False
    assert x1 is not None
    a.free(x1)
    assert v1.isolated and a.balance_pending and a.nr_empty_pop_pages == 5
    want = dict(
        nr_alloc=1,
        max_alloc_size=32768,
        empty_pop_pages=8,
        first_bit=0,
        free_bytes=40960,
        contig_bytes=32768,
        sum_frag=32768,
        max_frag=32768,
        cur_min_alloc=24576,
        cur_med_alloc=24576,
        cur_max_alloc=24576,
    )
    cs = chunk_stats(a, v1)
    assert (cs.kind, frag(cs)) == (CHUNK_TO_DEPOPULATE, want)
    a.run_balance()
    cs = chunk_stats(a, v1)
    assert (cs.kind, frag(cs)) == (CHUNK_SIDELINED, want | {"empty_pop_pages": 0})
    assert v1.populated_pages() == list(range(8, 14)) and a.nr_populated == 22
    assert a.lists[a.sidelined_slot] == [v1]
    n = len(a.events)
    a.alloc(32768, 8)
    assert new_events(a, n) == [alloc_ev(a, v1, 0, 32768, 8)]
    assert a.balance_pending  # reintegration made the global 5 + (-8) = -3
    assert (a.nr_empty_pop_pages, v1.list_slot, v1.isolated) == (5, 11, False)
    assert v1.populated_pages() == list(range(14))


# ---- population failure --------------------------------------------------------------


def test_population_failure_frees_the_area_and_fails() -> None:
    a = Allocator(CONFIG_S)
    fc = a.first_chunk
    a.alloc(21440, 4)
    a.fail_next_populate()
    assert a.alloc(32768, 8) is None
    v1_base = TOP_S - SPAN_S
    v1 = chunk_at(a, v1_base)
    assert a.events == [
        alloc_ev(a, fc, 3136, 21440, 4),
        PercpuCreateChunk(v1_base),
        PercpuAllocFail(reserved=False, is_atomic=False, size=32768, align=8),
    ]
    assert a.last_rejection is None  # a fail event, not a silent rejection
    g = a.percpu_stats().globals
    assert (g.nr_alloc, g.nr_dealloc, g.nr_cur_alloc, g.nr_max_alloc, g.max_alloc_size) == (
        2,
        1,
        1,
        2,
        32768,
    )
    assert (v1.free_bytes, v1.nr_populated, v1.list_slot, g.nr_chunks) == (
        65536,
        0,
        a.free_slot,
        2,
    )
    n = len(a.events)
    assert a.alloc(32768, 8) is not None
    assert new_events(a, n) == [alloc_ev(a, v1, 0, 32768, 8)]


# ---- bytes_alloc ---------------------------------------------------------------------

BYTES_ALLOC = [
    (Geometry(), 4, 16),
    (Geometry(), 8, 32),
    (Geometry(), 16, 64),
    (Geometry(), 260, 1040),
    (Geometry(), 32768, 131072),
    (CONFIG_S, 100, 600),
    (CONFIG_S, 21440, 128640),
    (CONFIG_S, 508, 3048),
    (Geometry(nr_possible_cpus=8, nr_units=8, memcg_kmem=False), 24, 192),
]


@pytest.mark.parametrize(("geometry", "size", "bytes_alloc"), BYTES_ALLOC)
def test_bytes_alloc_is_pcpu_obj_full_size(geometry: Geometry, size: int, bytes_alloc: int) -> None:
    a = Allocator(geometry)
    gfp = GFP_KERNEL_ACCOUNT  # independent of __GFP_ACCOUNT and of the chunk being charged
    assert a.alloc(size, 4, gfp=gfp) is not None
    ev = a.events[-1]
    assert isinstance(ev, PercpuAlloc) and ev.bytes_alloc == bytes_alloc
    assert ev.gfp_flags == gfp and ev.is_atomic is False


# ---- details the cases above leave open ----------------------------------------------


def test_pointer_is_base_plus_off_plus_delta_mod_2_64() -> None:
    a = Allocator(CONFIG_L, per_cpu_delta=D)
    a.alloc(32768, 8)
    v1 = chunk_at(a, V1_L)
    ptr = a.alloc(32768, 8, call_site=0xFFFFFFFF81234567)  # V1 off 32768
    ev = a.events[-1]
    assert isinstance(ev, PercpuAlloc) and ev.base_addr == v1.base_addr
    assert ptr == ev.ptr == (V1_L + ev.off + D) % 2**64 and ev.call_site == 0xFFFFFFFF81234567
    a2 = Allocator(CONFIG_L, per_cpu_delta=0, vmalloc_end=0xFFFFE7FFFFFFFFFF)
    a2.alloc(32768, 8)
    assert a2.events[0] == PercpuCreateChunk(0xFFFFE7FFFFC00000)


def test_slot0_is_never_searched_and_fuller_goes_to_tail() -> None:
    a = Allocator(CONFIG_S)
    fc = a.first_chunk
    a.alloc(21440, 4)  # FC full -> tail of slot 0
    x1, _x2, _x3 = (a.alloc(32768, 8) for _ in range(3))
    v1, v2 = created(a)
    assert a.lists[0] == [fc, v1]  # fuller -> tail
    assert v2.list_slot == 13
    assert x1 is not None
    a.free(x1)  # V1 got emptier: head of slot 13, ahead of V2
    assert a.lists[13] == [v1, v2] and not v1.isolated


def test_sidelined_searched_after_active_slots_before_free_slot() -> None:
    a = Allocator(CONFIG_S)
    x1 = a.alloc(32768, 8)
    a.alloc(24576, 8)
    assert x1 is not None
    a.free(x1)
    a.run_balance()  # V1 -> sidelined, and balance leaves no fully free chunk
    (v1,) = created(a)
    assert a.lists[a.sidelined_slot] == [v1]
    a.alloc(8, 4)  # FC (slot 12) is searched first
    assert a.events[-1] == alloc_ev(a, a.first_chunk, 3136, 8, 4)
    # make a fully free spare exist: the sidelined chunk still wins
    spare = a.create_chunk()
    assert spare is not None
    a.relocate(spare, -1)
    assert a.lists[a.free_slot] == [spare]
    a.alloc(32768, 8)
    assert a.events[-1] == alloc_ev(a, v1, 0, 32768, 8)


def test_balance_destroys_to_free_in_reverse_list_order() -> None:
    a = Allocator(CONFIG_L)
    for _ in range(3):
        c = a.create_chunk()
        assert c is not None
        a.relocate(c, -1)  # each new chunk goes to the head of the free slot
    v1, v2, v3 = created(a)
    assert a.lists[a.free_slot] == [v3, v2, v1]
    n = len(a.events)
    a.run_balance()
    assert new_events(a, n) == [PercpuDestroyChunk(v1.base_addr), PercpuDestroyChunk(v2.base_addr)]
    assert a.lists[a.free_slot] == [v3] and a.percpu_stats().globals.nr_chunks == 2


def test_destroyed_chunk_area_is_reused_only_after_the_lazy_purge() -> None:
    a = Allocator(CONFIG_S)
    cs = [a.create_chunk() for _ in range(3)]
    assert [c.base_addr for c in cs if c] == [TOP_S - k * SPAN_S for k in (1, 2, 3)]
    for c in cs:
        assert c is not None
        a.relocate(c, -1)
    a.run_balance()  # keeps the head (V3), destroys V1 then V2
    c4 = a.create_chunk()  # V1's and V2's areas are still lazily freed: below V3
    assert c4 is not None and c4.base_addr == TOP_S - 4 * SPAN_S
    a.vm.purge()
    c5 = a.create_chunk()
    assert c5 is not None and c5.base_addr == TOP_S - SPAN_S  # highest free area first


def test_lazy_areas_are_purged_past_lazy_max_pages() -> None:
    a = Allocator(CONFIG_L)
    assert a.vm.lazy_max_pages == 2 * 8192  # fls(2 CPUs) x 32 MiB of pages
    for k in range(33):  # areas of 512 pages: the 33rd passes 16384
        c = a.create_chunk()
        assert c is not None and c.base_addr == V1_L - k * (2 << 20)
        a.destroy_chunk(c)
        assert a.vm.lazy_pages == (0 if k == 32 else (k + 1) * 512)
    c = a.create_chunk()
    assert c is not None and c.base_addr == V1_L


def test_stats_walk_ignores_a_one_bit_allocation_on_the_last_bit() -> None:
    a = Allocator(CONFIG_L)
    fc = a.first_chunk
    a.alloc(31524, 4)  # bits 310..8190
    a.alloc(4, 4)  # bit 8191, the last usable bit
    assert a.events[-1] == alloc_ev(a, fc, 32764, 4, 4)
    cs = chunk_stats(a, fc)
    assert (cs.nr_alloc, cs.cur_min_alloc, cs.cur_max_alloc, cs.sum_frag) == (2, 31524, 31524, 0)


def test_free_with_another_free_chunk_requests_balance() -> None:
    a = Allocator(CONFIG_L)
    x = a.alloc(32768, 8)
    spare = a.create_chunk()
    assert spare is not None and x is not None
    a.relocate(spare, -1)
    a._balance_pending = False
    a.free(x)
    assert a.balance_pending and len(a.lists[a.free_slot]) == 2


@pytest.mark.parametrize(
    ("size", "align", "reason"),
    [(0, 4, "size"), (40000, 4, "size"), (8, 12, "align"), (8, 8192, "align"), (-4, 4, "size")],
)
def test_silent_rejections_emit_nothing_and_count_nothing(
    size: int, align: int, reason: str
) -> None:
    a = Allocator(CONFIG_L)
    before = a.percpu_stats()
    assert a.alloc(size, align) is None
    assert a.events == [] and a.last_rejection is not None and reason in a.last_rejection
    assert a.percpu_stats() == before
    assert a.alloc(8, 8) is not None and a.last_rejection is None


def test_memcg_charge_failure_is_silent_and_only_for_accounted_requests() -> None:
    a = Allocator(CONFIG_L)
    a.fail_next_memcg_charge()
    assert a.alloc(8, 8, gfp=GFP_KERNEL) is not None  # not charged: nothing consumed
    assert a.alloc(8, 8, gfp=GFP_KERNEL | GFP_ACCOUNT) is None
    assert a.last_rejection == "memcg charge failed" and len(a.events) == 1
    assert a.alloc(8, 8, gfp=GFP_KERNEL | GFP_ACCOUNT) is not None


def test_chunk_creation_failure_emits_fail_event() -> None:
    a = Allocator(CONFIG_L)
    a.fail_next_chunk_create()
    assert a.alloc(32768, 8) is None
    assert a.events == [PercpuAllocFail(reserved=False, is_atomic=False, size=32768, align=8)]
    assert a.percpu_stats().globals.nr_chunks == 1
    assert a.alloc(32768, 8) is not None
    assert a.events[1] == PercpuCreateChunk(V1_L)


def test_free_null_and_bogus_pointers() -> None:
    a = Allocator(CONFIG_L)
    a.free(0)
    assert a.events == []
    p = a.alloc(16, 8)
    assert p is not None
    for bogus in (p + 4, p + 2, p - 4096 * 2, 0x1234, (V1_L + D) % 2**64):
        with pytest.raises(ValueError):
            a.free(bogus)
    a.free(p)
    with pytest.raises(ValueError):  # double free
        a.free(p)
    assert a.events[-1] == free_ev(a.first_chunk, 1240)


def test_sink_receives_events_instead_of_the_list() -> None:
    got: list[Event] = []
    a = Allocator(CONFIG_L, sink=got.append)
    a.alloc(32768, 8)
    assert a.events == [] and [type(e) for e in got] == [PercpuCreateChunk, PercpuAlloc]


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("manual", BalancePolicy("manual")),
        ("eager", BalancePolicy("eager")),
        ("every:3", BalancePolicy("every", 3)),
    ],
)
def test_balance_policy_parse(text: str, policy: BalancePolicy) -> None:
    assert BalancePolicy.parse(text) == policy


@pytest.mark.parametrize("text", ["", "lazy", "every:0", "every:x", "every:-2"])
def test_balance_policy_rejects_garbage(text: str) -> None:
    with pytest.raises(ScenarioError):
        Allocator(CONFIG_L, balance=text)


def test_eager_policy_runs_balance_after_the_operation() -> None:
    a = Allocator(CONFIG_L, balance="eager")
    a.alloc(28672, 4)  # empties the first chunk's pages, then balance right away
    assert not a.balance_pending
    assert [type(e) for e in a.events] == [PercpuAlloc, PercpuCreateChunk]
    assert a.nr_empty_pop_pages == 4
    assert [what for _, what in a.balance_log] == ["requested", "run"]


def test_every_n_policy_runs_on_the_nth_operation() -> None:
    a = Allocator(CONFIG_L, balance="every:3")
    a.alloc(28672, 4)  # op 1 requests balance
    a.alloc(4, 4)  # op 2
    assert a.balance_pending
    a.alloc(4, 4)  # op 3 runs it
    assert not a.balance_pending and a.balance_log[-1] == (3, "run")


def test_meminfo_follows_population() -> None:
    a = Allocator(CONFIG_S)
    assert a.meminfo_percpu_kb() == 16 * 4 * 4
    a.alloc(32768, 8)
    assert a.meminfo_percpu_kb() == (16 + 8) * 4 * 4
