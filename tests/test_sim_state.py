"""build_allocator: a simulated allocator started from a known state."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.model.events import PercpuAlloc
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.chunk import Chunk
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S
from pcpu_bpf.sim.state import ChunkState, KnownState, build_allocator

V1 = 0xFFFFE8FFFFC00000
V3 = 0xFFFFE8FFFF800000


def live_areas(c: Chunk) -> list[tuple[int, int]]:
    """(offset, size) of every allocation in a dynamic chunk, from its bitmaps."""
    areas, bit = [], 0
    while bit < c.map_bits:
        if c.test_alloc_bit(bit):
            end = bit + 1
            while not c.bmap[end >> 10] >> (end & 1023) & 1:
                end += 1
            areas.append((bit * 4, (end - bit) * 4))
            bit = end
        else:
            bit += 1
    return areas


def test_chunks_at_given_bases_with_their_allocations() -> None:
    a = build_allocator(
        KnownState(
            chunks=(
                ChunkState(((0, 4096), (8192, 100)), base_addr=V3),
                ChunkState(),  # where pcpu_get_vm_areas() would put it: the top
            )
        )
    )
    assert a.events == []
    v3, top = a.chunk_by_base(V3), a.chunk_by_base(V1)
    assert v3 is not None and top is not None
    assert v3.free_bytes == (1 << 20) - 4096 - 100 and v3.nr_alloc == 2
    assert v3.populated_pages() == [0, 2] and v3.nr_empty_pop_pages == 0
    assert top.populated_pages() == [] and top.list_slot == a.free_slot
    g = a.percpu_stats().globals
    assert (g.nr_cur_alloc, g.nr_chunks, g.min_alloc_size, g.max_alloc_size) == (2, 3, 100, 4096)
    assert a.nr_empty_pop_pages == a.first_chunk.nr_empty_pop_pages
    # the next chunk goes below the given one's area, the first free one from the top
    assert [c.base_addr for c in (a.create_chunk(), a.create_chunk())] == [
        0xFFFFE8FFFFA00000,
        0xFFFFE8FFFF600000,
    ]
    # 32 KiB does not fit the first chunk; V3's slot comes before the free slot's
    a.alloc(32768, 8)
    ev = a.events[-1]
    assert isinstance(ev, PercpuAlloc) and (ev.base_addr, ev.off) == (V3, 8296)


def test_boot_chunk_allocations_and_list_order() -> None:
    fc_off = 1240 + 64
    a = build_allocator(
        KnownState(
            first_chunk=((fc_off, 32),),
            chunks=(ChunkState(((0, 64),), base_addr=V3), ChunkState(((0, 64),), base_addr=V1)),
        )
    )
    assert a.first_chunk.nr_alloc == 1 and a.first_chunk.free_bytes == 31528 - 32
    slot = a.chunk_slot(a.chunk_by_base(V3))  # type: ignore[arg-type]
    assert [c.base_addr for c in a.lists[slot]] == [V3, V1]  # the order given


def test_reserved_allocations_need_a_reserved_chunk() -> None:
    a = build_allocator(KnownState(reserved_chunk=((3136 + 64, 8),)), CONFIG_S)  # past 0xC40 hidden
    assert a.reserved_chunk is not None and a.reserved_chunk.nr_alloc == 1
    with pytest.raises(ScenarioError, match="no reserved chunk"):
        build_allocator(KnownState(reserved_chunk=((64, 8),)))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (KnownState(chunks=(ChunkState(((0, 64), (32, 64))),)), "overlap"),
        (KnownState(chunks=(ChunkState((((1 << 20) - 4, 8),)),)), "do not fit"),
        (KnownState(first_chunk=((0, 8),)), "hides"),
        (KnownState(chunks=(ChunkState(((0, 8),), populated=(1,)),)), "not populated"),
        (KnownState(chunks=(ChunkState(populated=(256,)),)), "outside"),
        (
            KnownState(chunks=(ChunkState(base_addr=V1), ChunkState(base_addr=V1 + 4096))),
            "not free",
        ),
    ],
)
def test_impossible_states_are_one_line_errors(state: KnownState, message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        build_allocator(state)
    assert "\n" not in str(info.value)


def random_chunk(rng: random.Random, steps: int, free_share: float) -> tuple[Allocator, Chunk]:
    """A fresh dynamic chunk after a random run of sleeping allocations and frees."""
    a = Allocator(CONFIG_L)
    c = a.create_chunk()
    assert c is not None
    a.relocate(c, -1)
    live: list[int] = []
    for _ in range(steps):
        if live and rng.random() < free_share:
            off = live.pop(rng.randrange(len(live)))
            c.free_area(off)
        else:
            size = rng.choice((4, 8, 24, 64, 200, 4096, 5000, 32768))
            align = rng.choice((4, 8, 64, 4096))
            off = a.search_chunk(c, size, align)
            if off is not None:
                a.alloc_in_chunk(c, size, align)
                live.append(off)
    return a, c


def rebuilt(c: Chunk) -> tuple[Allocator, Chunk]:
    b = build_allocator(
        KnownState(chunks=(ChunkState(live_areas(c), populated=c.populated_pages()),))
    )
    r = b.chunk_by_base(c.base_addr)
    assert r is not None
    return b, r


PROBES = [
    (size, align) for size in (4, 16, 100, 1024, 4096, 9000, 32768) for align in (4, 256, 4096)
]


@given(st.integers(0, 2**32), st.integers(0, 300))
def test_a_rebuilt_chunk_has_the_same_maps(seed: int, steps: int) -> None:
    a, c = random_chunk(random.Random(seed), steps, free_share=0.4)
    _, r = rebuilt(c)
    assert (r.free_bytes, r.largest_free_run(), r.page_fill(), r.populated) == (
        c.free_bytes,
        c.largest_free_run(),
        c.page_fill(),
        c.populated,
    )
    assert r.nr_empty_pop_pages == c.nr_empty_pop_pages


@given(st.integers(0, 2**32), st.integers(0, 300))
def test_after_allocations_alone_a_rebuilt_chunk_answers_as_the_original(
    seed: int, steps: int
) -> None:
    # Frees can leave hints stale in the kernel's ways, which a state does not carry; a
    # history of allocations alone leaves the hints a state rebuilds.
    a, c = random_chunk(random.Random(seed), steps, free_share=0.0)
    b, r = rebuilt(c)
    for size, align in PROBES:
        assert b.search_chunk(r, size, align) == a.search_chunk(c, size, align), (size, align)
