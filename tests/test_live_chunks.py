"""The live backend's chunk map from constructed inputs: traced chunks drawn, the others not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from test_chunk_view import check_golden

from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.model.kernel_stats import CHUNK_NORMAL, ChunkStats, KernelStats, PercpuStats
from pcpu_bpf.model.live_chunks import (
    AMBIGUOUS,
    BEFORE_TRACING,
    UNMATCHED,
    TracedChunk,
    group_by_chunk,
    live_chunk_map,
    traced_chunk_map,
)
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.top.chunks import render_chunks, render_chunks_json
from pcpu_bpf.top.render import WIDTH

STATS = Path(__file__).parent / "fixtures" / "percpu_stats"
PAGE = 4096
SHIFT = 0xFFFFC8FF00000000
BASE_A, BASE_B = 0xFFFFC90000400000, 0xFFFFC90000800000


def stats_with(*chunks: ChunkStats) -> PercpuStats:
    """live-6.18's percpu_stats (unit 1 MiB per the fixture) with ``chunks`` added."""
    base = parse_percpu_stats((STATS / "live-6.18.txt").read_text())
    return dataclasses.replace(base, chunks=(*base.chunks, *chunks))


def chunk_stats(nr_alloc: int, free: int, empty_pop: int = 0) -> ChunkStats:
    return ChunkStats(CHUNK_NORMAL, nr_alloc, 64, empty_pop, 0, free, free, 0, 0, 4, 8, 64)


def entry(base: int, off: int, size: int) -> tuple[int, int, int]:
    """A live entry (ptr, off, size) of an allocation at ``off`` in chunk ``base``."""
    return (base + off - SHIFT) & (1 << 64) - 1, off, size


def test_entries_go_to_their_chunk_by_pointer_minus_offset() -> None:
    entries = [entry(BASE_A, 0, 8), entry(BASE_B, 4096, 5), entry(BASE_A, 64, 4)]
    entries.append(entry(0xFFFFC90000C00000, 0, 4))  # a chunk from before tracing
    got = group_by_chunk(entries, [BASE_A, BASE_B, 0xFFFFC90001000000], SHIFT)
    assert [c.allocations for c in got] == [((0, 8), (64, 4)), ((4096, 5),), ()]
    assert got[1].used_bytes == 8  # 5 rounded up to PCPU_MIN_ALLOC_SIZE


def test_a_traced_chunk_is_drawn_and_matched_to_its_percpu_stats_entry() -> None:
    unit = stats_with().info.unit_size
    traced = TracedChunk(BASE_A, ((0, 4096), (4096, 100), (3 * 4096, 4096)))
    used = 4096 + 100 + 4096
    stats = stats_with(chunk_stats(3, unit - used, empty_pop=2), chunk_stats(7, 1000))
    m = live_chunk_map([traced], stats, page_size=PAGE)
    drawn = [c for c in m.chunks if c.pages is not None]
    assert len(drawn) == 1 and len(m.chunks) == len(stats.chunks)
    c = drawn[0]
    assert (c.base_addr, c.nr_alloc, c.free_bytes) == (BASE_A, 3, unit - used)
    # Pages 0 and 3 full, 1 partly used; the 2 empty populated pages at the lowest free.
    assert c.pages is not None and c.pages[:6] == "fpefeu" and set(c.pages[6:]) == {"u"}
    assert c.largest_free == unit - 4 * 4096
    assert "2 empty populated page(s) put at" in c.note
    assert all(x.note == BEFORE_TRACING for x in m.chunks if x.pages is None)
    assert m.note.startswith("1 chunk(s) created since tracing began drawn")
    assert f"{len(stats.chunks) - 1} not drawn" in m.note


def test_figures_shared_by_several_entries_are_said() -> None:
    unit = stats_with().info.unit_size
    stats = stats_with(chunk_stats(0, unit), chunk_stats(0, unit))
    m = live_chunk_map([TracedChunk(BASE_A, ())], stats, page_size=PAGE)
    (c,) = [c for c in m.chunks if c.pages is not None]
    assert AMBIGUOUS.format(n=2) in c.note
    assert c.pages == "u" * (unit // PAGE)


def test_a_traced_chunk_without_its_figures_in_percpu_stats_is_drawn_apart() -> None:
    m = live_chunk_map([TracedChunk(BASE_A, ((0, 8),))], stats_with(), page_size=PAGE)
    assert m.chunks[-1].base_addr == BASE_A and UNMATCHED in m.chunks[-1].note
    assert "found no percpu_stats entry" in m.note


def test_without_percpu_stats_what_the_trace_knows() -> None:
    m = live_chunk_map(
        [TracedChunk(BASE_A, ((8192, 16),))],
        None,
        page_size=PAGE,
        dropped_allocations=3,
        untraced_chunks=1,
    )
    (c,) = m.chunks
    assert c.pages == "uup" and c.size == 8192 + 16
    assert "CONFIG_PERCPU_STATS" in m.note and "3 allocation(s) dropped" in m.note
    assert "1 chunk(s) created found the chunk table full" in m.note


def test_golden_live_chunk_view(update_golden: bool) -> None:
    unit = stats_with().info.unit_size
    entries = [entry(BASE_A, i * 96, 64) for i in range(300)] + [entry(BASE_B, 0, 32768)]
    used_a = 300 * 64
    stats = stats_with(chunk_stats(300, unit - used_a, empty_pop=1), chunk_stats(1, unit - 32768))
    m = traced_chunk_map(
        [BASE_A, BASE_B], SHIFT, entries, stats, page_size=PAGE, dropped={"live_table_full": 0}
    )
    snap = Snapshot(
        backend="bpf", kernel="6.18.0", timestamp=0.0, kernel_stats=KernelStats(stats), chunk_map=m
    )
    text = render_chunks(snap, source="bpf", clock="12:00:00")
    check_golden("live-6.18-traced.txt", text, update_golden)
    assert "drawn 2" in text and max(map(len, text.splitlines())) <= WIDTH
    doc = render_chunks_json(snap, source="bpf", time="t")
    assert '"base_addr"' in doc and "drawn from its traced allocations" in doc
