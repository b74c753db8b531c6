"""The chunks as pictures: each chunk's pages and free space, for pcpu-top --chunks.

A backend that knows a chunk's allocation bitmap draws every page of it (the simulator,
a replayed recording, the live backend for the chunks created since tracing began:
live_chunks.py); one that only has percpu_stats gives the chunk's figures and says why
its pages are not drawn. A page is unpopulated, empty (populated, nothing in it),
partly used or full; the boot chunk's bytes outside its dynamic area count as used.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcpu_bpf.model.kernel_stats import CHUNK_FIRST, CHUNK_RESERVED, ChunkStats, PercpuStats

PAGE_UNPOPULATED = "u"
PAGE_EMPTY = "e"
PAGE_PARTLY_USED = "p"
PAGE_FULL = "f"
PAGE_STATES = (PAGE_UNPOPULATED, PAGE_EMPTY, PAGE_PARTLY_USED, PAGE_FULL)


@dataclass(frozen=True, slots=True)
class ChunkPicture:
    """One chunk: its figures, and its pages when they are known."""

    kind: str  # a CHUNK_* kind of kernel_stats
    size: int  # bytes it serves per unit
    free_bytes: int
    nr_alloc: int
    largest_free: int | None = None  # bytes of its longest free run; None: unknown
    base_addr: int | None = None
    pages: str | None = None  # one PAGE_* code per page; None: not known
    note: str = ""  # why the pages are not known, or what in them is estimated

    @property
    def fragmentation(self) -> float | None:
        """Share of the free bytes outside the largest free run (0: one run; None: unknown)."""
        if self.largest_free is None:
            return None
        if not self.free_bytes:
            return 0.0
        return max(0.0, 1 - self.largest_free / self.free_bytes)


@dataclass(frozen=True, slots=True)
class ChunkMap:
    """Every chunk, reserved first, then in the allocator's list order."""

    chunks: tuple[ChunkPicture, ...]
    note: str = ""  # about the map as a whole


def page_state(populated: bool, used_bits: int, page_bits: int) -> str:
    """The PAGE_* code of one page."""
    if not populated:
        return PAGE_UNPOPULATED
    if used_bits == 0:
        return PAGE_EMPTY
    return PAGE_FULL if used_bits >= page_bits else PAGE_PARTLY_USED


def stats_picture(stats: PercpuStats, chunk: ChunkStats, why: str) -> ChunkPicture:
    """One chunk from its percpu_stats figures alone: contig_bytes stands for the largest
    free run (the kernel's hint, which may be stale), and no page is drawn, for ``why``."""
    info = stats.info
    sizes = {CHUNK_FIRST: info.dyn_size, CHUNK_RESERVED: info.reserved_size}
    return ChunkPicture(
        kind=chunk.kind,
        size=sizes.get(chunk.kind, info.unit_size),
        free_bytes=chunk.free_bytes,
        nr_alloc=chunk.nr_alloc,
        largest_free=chunk.contig_bytes,
        note=why,
    )


def chunk_map_from_stats(stats: PercpuStats, why: str) -> ChunkMap:
    """Every chunk from percpu_stats alone (`stats_picture`)."""
    return ChunkMap(
        tuple(stats_picture(stats, c, why) for c in stats.chunks),
        note=why,
    )
