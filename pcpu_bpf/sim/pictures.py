"""The simulated allocator's chunks as a ChunkMap: every page of every chunk is known."""

from __future__ import annotations

from collections.abc import Mapping

from pcpu_bpf.model.chunk_map import ChunkMap, ChunkPicture, page_state
from pcpu_bpf.model.kernel_stats import CHUNK_FIRST, CHUNK_RESERVED
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.chunk import BLOCK_BITS, MIN_ALLOC_SIZE, Chunk


def chunk_picture(c: Chunk, kind: str, size: int, note: str = "") -> ChunkPicture:
    """One chunk drawn from its bitmaps."""
    fill = c.page_fill()
    pages = "".join(
        page_state(bool(c.populated >> i & 1), used, BLOCK_BITS) for i, used in enumerate(fill)
    )
    return ChunkPicture(
        kind=kind,
        size=size,
        free_bytes=c.free_bytes,
        nr_alloc=c.nr_alloc,
        largest_free=c.largest_free_run() * MIN_ALLOC_SIZE,
        base_addr=c.base_addr,
        pages=pages,
        note=note,
    )


def chunk_map(
    allocator: Allocator, *, notes: Mapping[int, str] | None = None, note: str = ""
) -> ChunkMap:
    """Every chunk in percpu_stats order; ``notes`` by base_addr says what is estimated."""
    notes = notes or {}
    g = allocator.geometry
    kinds = [s.kind for s in allocator.percpu_stats().chunks]
    chunks = ([allocator.reserved_chunk] if allocator.reserved_chunk else []) + [
        c for _, c in allocator.chunk_lists()
    ]
    sizes = {CHUNK_FIRST: g.dyn_size, CHUNK_RESERVED: g.reserved_size}
    return ChunkMap(
        tuple(
            chunk_picture(c, kind, sizes.get(kind, g.unit_size), notes.get(c.base_addr, ""))
            for c, kind in zip(chunks, kinds, strict=True)
        ),
        note=note,
    )
