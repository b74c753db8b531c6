"""What a recording says about its chunks before anything is replayed.

Chunks are told apart by their base_addr token (an address, or its hash), and a token
freed and created again is a new chunk. A chunk created during the recording starts
fully free, so everything in it is known. A chunk the events name before any create is
one that existed before the recording: what it held then is known only where the
recording frees it (an allocation made before the recording began). Those are the
seeds; a free event has no size, so a seed's size is the most it can be: up to the
next allocation known to have been live beside it, at most 32 KiB, unless the recorder
wrote the size down beside the free.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from pcpu_bpf.model.events import (
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.recording import Recording

MAX_ALLOC_SIZE = 32 << 10  # PCPU_MIN_UNIT_SIZE: the largest allocation


@dataclass
class ChunkInfo:
    """One chunk of the recording, as the events show it."""

    index: int
    token: int  # base_addr as recorded
    created_at: int | None = None  # event index of its create; None: existed before
    destroyed_at: int | None = None
    reserved: bool = False  # held reserved allocations
    offsets: set[int] = field(default_factory=set)
    allocs: list[tuple[int, int]] = field(default_factory=list)  # (event index, offset)
    # (offset, event index of the free) of allocations made before the recording
    seed_frees: list[tuple[int, int]] = field(default_factory=list)
    seeds: dict[int, int] = field(default_factory=dict)  # offset -> size (an upper bound)
    seed_sizes: dict[int, int] = field(default_factory=dict)  # offset -> size recorded

    @property
    def created(self) -> bool:
        """Created during the recording: its whole content is known."""
        return self.created_at is not None


@dataclass
class Timeline:
    """Each event's chunk, and every chunk."""

    chunks: list[ChunkInfo]
    chunk_of: list[int | None]  # event index -> chunk index
    # event index of an alloc -> the index of the free that ends it, if any
    freed_by: dict[int, int]
    # event index of a free -> the alloc it ends, or None for a seed
    frees: dict[int, int | None]
    recorded_creates: int = 0
    recorded_destroys: int = 0
    recorded_fails: int = 0


def build_timeline(recording: Recording, unit_size: int) -> Timeline:
    """Walk the events once: chunk identities, allocation lifetimes, seeds."""
    chunks: list[ChunkInfo] = []
    alive: dict[int, ChunkInfo] = {}
    chunk_of: list[int | None] = []
    live: dict[tuple[int, int], int] = {}  # (chunk, off) -> alloc event index
    freed_by: dict[int, int] = {}
    frees: dict[int, int | None] = {}
    creates = destroys = fails = 0

    def chunk(token: int) -> ChunkInfo:
        c = alive.get(token)
        if c is None:
            c = ChunkInfo(len(chunks), token)
            chunks.append(c)
            alive[token] = c
        return c

    for i, rec in enumerate(recording.events):
        e = rec.event
        if isinstance(e, PercpuAllocFail):
            fails += 1
            chunk_of.append(None)
            continue
        if isinstance(e, PercpuCreateChunk):
            creates += 1
            if e.base_addr in alive:  # its destroy was lost: a new chunk all the same
                del alive[e.base_addr]
            c = chunk(e.base_addr)
            c.created_at = i
        elif isinstance(e, PercpuDestroyChunk):
            destroys += 1
            c = chunk(e.base_addr)
            c.destroyed_at = i
            del alive[e.base_addr]
        elif isinstance(e, PercpuAlloc):
            c = chunk(e.base_addr)
            c.offsets.add(e.off)
            c.reserved |= e.reserved
            c.allocs.append((i, e.off))
            live[(c.index, e.off)] = i
        else:
            assert isinstance(e, PercpuFree)
            c = chunk(e.base_addr)
            c.offsets.add(e.off)
            start = live.pop((c.index, e.off), None)
            frees[i] = start
            if start is not None:
                freed_by[start] = i
            elif not c.created and e.off not in c.seeds:
                c.seeds[e.off] = 0  # sized below, once every event is known
                c.seed_frees.append((e.off, i))
                if rec.size is not None and rec.size > 0:
                    c.seed_sizes[e.off] = rec.size
        chunk_of.append(c.index)

    timeline = Timeline(chunks, chunk_of, freed_by, frees, creates, destroys, fails)
    for c in chunks:
        _size_seeds(c, unit_size)
    return timeline


def _size_seeds(c: ChunkInfo, unit_size: int) -> None:
    """Each seed reaches at most to the next start known to be live while it was."""
    seed_starts = sorted(off for off, _ in c.seed_frees)
    made: list[int] = []  # offsets of allocations made before the current seed's free
    allocs = iter(c.allocs)  # in event order
    pending = next(allocs, None)
    for off, freed_at in sorted(c.seed_frees, key=lambda s: s[1]):
        while pending is not None and pending[0] < freed_at:
            bisect.insort(made, pending[1])
            pending = next(allocs, None)
        k = bisect.bisect_right(seed_starts, off)
        limit = seed_starts[k] if k < len(seed_starts) else unit_size
        j = bisect.bisect_right(made, off)
        if j < len(made):
            limit = min(limit, made[j])
        bound = max(min(limit - off, MAX_ALLOC_SIZE), 4)
        c.seeds[off] = min(c.seed_sizes.get(off, bound), bound)
