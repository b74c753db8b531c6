"""The live kernel's chunks as a ChunkMap: traced chunks drawn, the others from percpu_stats.

A chunk created since tracing began holds only traced allocations (the live table keeps
each one's offset), so its bitmap is known: its used bytes, free runs and which pages
hold something, exactly unless a full table dropped some of them. Which pages are
populated is not traced: a page holding an allocation is populated; of the others,
percpu_stats' count of empty populated pages is placed at the lowest ones when the
chunk can be told apart in percpu_stats, else they are shown unpopulated. A chunk that
existed before tracing began holds allocations tracing never saw: it is given from
percpu_stats' figures, undrawn. percpu_stats names no base address, so a traced chunk
is matched to its entry by its figures (allocations, free bytes); when several entries
share them, it takes the first of them not yet taken and is marked so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pcpu_bpf.model.chunk_map import ChunkMap, ChunkPicture, page_state, stats_picture
from pcpu_bpf.model.kernel_stats import (
    CHUNK_FIRST,
    CHUNK_NORMAL,
    CHUNK_RESERVED,
    ChunkStats,
    PercpuStats,
)

# pcpu_alloc() rounds every size up to PCPU_MIN_ALLOC_SIZE, the bitmap's unit.
MIN_ALLOC_SIZE = 4

BEFORE_TRACING = "existed before tracing began: figures from percpu_stats, pages not drawn"
PAGES_TRACED = "drawn from its traced allocations; page population is not traced"
EMPTY_PLACED = "percpu_stats' {n} empty populated page(s) put at its lowest free pages"
NONE_EMPTY = "percpu_stats counts no empty populated page in it"
NO_EMPTY_COUNT = "pages holding nothing shown unpopulated"
AMBIGUOUS = "percpu_stats has {n} chunks with its figures: matched to the first"
UNMATCHED = "no percpu_stats entry has its figures (the allocator moved during the read)"
NO_STATS_SIZE = "no percpu_stats: size unknown, drawn up to its last allocation"


@dataclass(frozen=True, slots=True)
class TracedChunk:
    """A chunk created since tracing began, with the live traced allocations in it."""

    base_addr: int
    allocations: tuple[tuple[int, int], ...]  # (offset, requested size), by offset

    @property
    def used_bytes(self) -> int:
        """Bytes its allocations take, each rounded up as pcpu_alloc() does."""
        return sum(_rounded(size) for _, size in self.allocations)


def _rounded(size: int) -> int:
    return -(-size // MIN_ALLOC_SIZE) * MIN_ALLOC_SIZE


def group_by_chunk(
    entries: Iterable[tuple[int, int, int]], bases: Sequence[int], shift: int
) -> list[TracedChunk]:
    """The traced chunks (``bases``, in order) with their allocations, from live entries
    (ptr, off, size): an entry's chunk is ptr - off + shift (modulo 2**64)."""
    wanted = set(bases)
    found: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
    for ptr, off, size in entries:
        base = (ptr - off + shift) & 0xFFFF_FFFF_FFFF_FFFF
        if base in wanted:
            found[base].append((off, size))
    return [TracedChunk(b, tuple(sorted(found.get(b, ())))) for b in dict.fromkeys(bases)]


def traced_picture(
    chunk: TracedChunk, *, size: int | None, page_size: int, stats: ChunkStats | None, note: str
) -> ChunkPicture:
    """One traced chunk drawn page by page; ``size`` None: unknown (no percpu_stats)."""
    ends = [off + _rounded(n) for off, n in chunk.allocations]
    notes = [PAGES_TRACED]
    if size is None:
        size = max([page_size, *ends])
        notes.append(NO_STATS_SIZE)
    nr_pages = -(-size // page_size)
    used = [0] * nr_pages
    for off, n in chunk.allocations:
        start, end = off, min(off + _rounded(n), nr_pages * page_size)
        while start < end:
            page = start // page_size
            step = min(end, (page + 1) * page_size) - start
            used[page] += step
            start += step
    empties = 0 if stats is None else max(0, stats.empty_pop_pages)
    if stats is None:
        notes.append(NO_EMPTY_COUNT)
    else:
        notes.append(EMPTY_PLACED.format(n=empties) if empties else NONE_EMPTY)
    states = []
    for bytes_used in used:
        populated = bytes_used > 0 or empties > 0
        if not bytes_used and empties:
            empties -= 1
        states.append(page_state(populated, bytes_used, page_size))
    if note:
        notes.append(note)
    return ChunkPicture(
        kind=stats.kind if stats is not None else CHUNK_NORMAL,
        size=size,
        free_bytes=size - chunk.used_bytes,
        nr_alloc=len(chunk.allocations),
        largest_free=_largest_gap(chunk.allocations, size),
        base_addr=chunk.base_addr,
        pages="".join(states),
        note="; ".join(notes),
    )


def _largest_gap(allocations: Sequence[tuple[int, int]], size: int) -> int:
    at, best = 0, 0
    for off, n in allocations:
        best = max(best, off - at)
        at = max(at, off + _rounded(n))
    return max(best, size - at)


def live_chunk_map(
    traced: Sequence[TracedChunk],
    stats: PercpuStats | None,
    *,
    page_size: int,
    dropped_allocations: int = 0,
    untraced_chunks: int = 0,
) -> ChunkMap:
    """Every chunk: the traced ones drawn, the others from percpu_stats' figures.

    ``dropped_allocations``: allocations no live entry was made for since tracing began
    (the drawn used bytes may then be short); ``untraced_chunks``: chunks created since
    tracing began that the chunk table had no room for."""
    if stats is None:
        pictures = tuple(
            traced_picture(c, size=None, page_size=page_size, stats=None, note="") for c in traced
        )
        note = (
            f"{len(pictures)} chunk(s) created since tracing began drawn; without "
            "percpu_stats (CONFIG_PERCPU_STATS) the chunks that existed before are not known"
        )
        return ChunkMap(pictures, note=_with_losses(note, dropped_allocations, untraced_chunks))
    info = stats.info
    matched, notes = match_traced(traced, stats.chunks, info.unit_size)
    by_base = {c.base_addr: c for c in traced}
    by_entry = {i: by_base[base] for base, i in matched.items()}
    pictures_list: list[ChunkPicture] = []
    for i, entry in enumerate(stats.chunks):
        chunk = by_entry.get(i)
        if chunk is None:
            pictures_list.append(stats_picture(stats, entry, BEFORE_TRACING))
            continue
        pictures_list.append(
            traced_picture(
                chunk,
                size=info.unit_size,
                page_size=page_size,
                stats=entry,
                note=notes.get(chunk.base_addr, ""),
            )
        )
    unmatched = [c for c in traced if c.base_addr not in matched]
    pictures_list += [
        traced_picture(c, size=info.unit_size, page_size=page_size, stats=None, note=UNMATCHED)
        for c in unmatched
    ]
    drawn = len(traced)
    before = len(stats.chunks) - len(matched)
    note = (
        f"{drawn} chunk(s) created since tracing began drawn from the traced allocations; "
        f"{before} not drawn (existed before tracing began: percpu_stats' figures, LARGEST "
        "is the kernel's contig hint)"
    )
    if unmatched:
        note += (
            f"; {len(unmatched)} drawn chunk(s) found no percpu_stats entry with their figures: "
            "one of the undrawn entries may be the same chunk"
        )
    return ChunkMap(
        tuple(pictures_list), note=_with_losses(note, dropped_allocations, untraced_chunks)
    )


def match_traced(
    traced: Sequence[TracedChunk], entries: Sequence[ChunkStats], unit_size: int
) -> tuple[dict[int, int], dict[int, str]]:
    """Each traced chunk's base_addr -> the index of its percpu_stats entry, where one
    has its figures (nr_alloc, free bytes; the boot chunks never match); and a note by
    base_addr for the chunks whose figures several entries share."""
    figures = [
        (e.nr_alloc, e.free_bytes) if e.kind not in (CHUNK_FIRST, CHUNK_RESERVED) else None
        for e in entries
    ]
    shared = Counter(f for f in figures if f is not None)
    taken: set[int] = set()
    matched: dict[int, int] = {}
    notes: dict[int, str] = {}
    for chunk in traced:
        want = (len(chunk.allocations), unit_size - chunk.used_bytes)
        for i, f in enumerate(figures):
            if f == want and i not in taken:
                taken.add(i)
                matched[chunk.base_addr] = i
                if shared[want] > 1:
                    notes[chunk.base_addr] = AMBIGUOUS.format(n=shared[want])
                break
    return matched, notes


def _with_losses(note: str, dropped_allocations: int, untraced_chunks: int) -> str:
    if dropped_allocations:
        note += (
            f"; {dropped_allocations} allocation(s) dropped by a full table since tracing "
            "began: a drawn chunk's used bytes may be short"
        )
    if untraced_chunks:
        note += f"; {untraced_chunks} chunk(s) created found the chunk table full: not drawn"
    return note


def traced_chunk_map(
    bases: Sequence[int],
    shift: int,
    entries: Iterable[tuple[int, int, int]],
    stats: PercpuStats | None,
    *,
    page_size: int,
    dropped: Mapping[str, int],
) -> ChunkMap:
    """The live backend's chunk map from what its maps hold: the traced chunks' bases,
    the pointer shift, the live entries (ptr, off, size) and the drop counters."""
    return live_chunk_map(
        group_by_chunk(entries, bases, shift),
        stats,
        page_size=page_size,
        dropped_allocations=dropped.get("live_table_full", 0) + dropped.get("site_table_full", 0),
        untraced_chunks=dropped.get("chunk_table_full", 0),
    )
