"""pcpu-top --chunks: each chunk as a row of pages, with its free space, under 80 columns.

A cell stands for a power-of-two number of pages, chosen so the largest chunk fits in
MAP_CELLS cells: a cell is full when all its pages are, unpopulated when all are,
empty when none of its populated pages holds anything, and partly used otherwise.
Glyphs are ASCII unless the output is a terminal that can show block characters.
"""

from __future__ import annotations

import json
from typing import Any

from pcpu_bpf.model.chunk_map import (
    PAGE_EMPTY,
    PAGE_FULL,
    PAGE_PARTLY_USED,
    PAGE_UNPOPULATED,
    ChunkMap,
    ChunkPicture,
    chunk_map_from_stats,
)
from pcpu_bpf.model.kernel_stats import (
    CHUNK_FIRST,
    CHUNK_RESERVED,
    CHUNK_SIDELINED,
    CHUNK_TO_DEPOPULATE,
)
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.model.snapshot_json import chunk_map_to_dict
from pcpu_bpf.top.render import WIDTH, fit_line
from pcpu_bpf.units import human_bytes, human_int

MAP_CELLS = 32
ASCII_GLYPHS = {PAGE_UNPOPULATED: ".", PAGE_EMPTY: "-", PAGE_PARTLY_USED: "o", PAGE_FULL: "#"}
BLOCK_GLYPHS = {PAGE_UNPOPULATED: "·", PAGE_EMPTY: "░", PAGE_PARTLY_USED: "▒", PAGE_FULL: "█"}
_KIND_MARK = {CHUNK_SIDELINED: "S", CHUNK_TO_DEPOPULATE: "D"}
# label, then the figures: name and width
_COLUMNS = (("FREE", 8), ("LARGEST", 8), ("FRAG", 4), ("ALLOCS", 6))
LABEL_WIDTH = 13

NO_PAGES_LIVE = (
    "pages not drawn: the live table could not be walked (no batch map lookup before "
    "Linux 5.6); figures are percpu_stats' (LARGEST is the kernel's contig hint)"
)


def snapshot_chunk_map(snapshot: Snapshot) -> ChunkMap | None:
    """The Snapshot's chunk map, or one from its percpu_stats figures alone."""
    if snapshot.chunk_map is not None:
        return snapshot.chunk_map
    ks = snapshot.kernel_stats
    if ks is None or ks.percpu_stats is None or not ks.percpu_stats.chunks:
        return None
    return chunk_map_from_stats(ks.percpu_stats, NO_PAGES_LIVE)


def pages_per_cell(chunks: tuple[ChunkPicture, ...]) -> int:
    """The smallest power of two that fits the longest drawn chunk in MAP_CELLS cells."""
    longest = max((len(c.pages) for c in chunks if c.pages), default=1)
    ppc = 1
    while -(-longest // ppc) > MAP_CELLS:
        ppc *= 2
    return ppc


def cell_state(pages: str) -> str:
    """One cell's state from its pages' states."""
    states = set(pages)
    if len(states) == 1:
        return pages[0]
    if states <= {PAGE_UNPOPULATED, PAGE_EMPTY}:
        return PAGE_EMPTY
    return PAGE_PARTLY_USED


def label(c: ChunkPicture) -> str:
    """The chunk's name: the boot chunks by kind, the others by the low 40 bits of their
    base (enough to tell them apart), marked S (sidelined) or D (to depopulate)."""
    if c.kind == CHUNK_FIRST:
        name = "first"
    elif c.kind == CHUNK_RESERVED:
        name = "reserved"
    elif c.base_addr is not None:
        name = f"{c.base_addr & (1 << 40) - 1:010x}"
    else:
        name = "chunk"
    return name + _KIND_MARK.get(c.kind, "") + ("*" if c.note and c.pages else "")


def chunk_lines(m: ChunkMap, *, glyphs: dict[str, str] = ASCII_GLYPHS) -> list[str]:
    """The legend, the column header and one line per chunk, each within WIDTH."""
    ppc = pages_per_cell(m.chunks)
    cell = "1 cell = 1 page" if ppc == 1 else f"1 cell = {ppc} pages"
    legend = "  ".join(
        f"{glyphs[s]} {name}"
        for s, name in (
            (PAGE_UNPOPULATED, "unpopulated"),
            (PAGE_EMPTY, "empty"),
            (PAGE_PARTLY_USED, "partly used"),
            (PAGE_FULL, "full"),
        )
    )
    head = f"{'CHUNK':<{LABEL_WIDTH}}" + "".join(f" {h:>{w}}" for h, w in _COLUMNS) + " PAGES"
    drawn = any(c.pages is not None for c in m.chunks)
    lines = [fit_line(f"{cell}: {legend}"), "", head] if drawn else [head]
    for c in m.chunks:
        frag = c.fragmentation
        cells = (
            human_bytes(c.free_bytes),
            "-" if c.largest_free is None else human_bytes(c.largest_free),
            "-" if frag is None else f"{round(frag * 100)}%",
            human_int(c.nr_alloc),
        )
        line = f"{label(c):<{LABEL_WIDTH}}"
        line += "".join(f" {v:>{w}}" for v, (_, w) in zip(cells, _COLUMNS, strict=True))
        if c.pages is not None:
            line += " " + "".join(
                glyphs[cell_state(c.pages[i : i + ppc])] for i in range(0, len(c.pages), ppc)
            )
        lines.append(line[:WIDTH])
    notes = dict.fromkeys(c.note for c in m.chunks if c.note and c.pages)
    for n in notes:
        lines.extend(_wrap(f"* {n}"))
    if m.note:
        lines.extend(_wrap(m.note))
    if not m.chunks:
        lines.append("(no chunks)")
    return lines


def _wrap(text: str) -> list[str]:
    words, out, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > WIDTH:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return [*out, line] if line else out


def render_chunks(
    snapshot: Snapshot, *, source: str, clock: str, glyphs: dict[str, str] = ASCII_GLYPHS
) -> str:
    """The chunk view of one Snapshot, as text."""
    m = snapshot_chunk_map(snapshot)
    first = fit_line(f"{clock}  {source}  kernel {snapshot.kernel}  chunks".strip())
    if m is None:
        return (
            first + "\n(no chunk figures: this source has neither a chunk map nor percpu_stats)\n"
        )
    totals = (
        f"{len(m.chunks)} chunks  free {human_bytes(sum(c.free_bytes for c in m.chunks))}"
        f"  drawn {sum(c.pages is not None for c in m.chunks)}"
    )
    return "\n".join([first, totals, *chunk_lines(m, glyphs=glyphs)]) + "\n"


def render_chunks_json(snapshot: Snapshot, *, source: str, time: str) -> str:
    """The chunk view of one Snapshot, as one JSON line."""
    m = snapshot_chunk_map(snapshot)
    doc: dict[str, Any] = {
        "time": time,
        "source": source,
        "backend": snapshot.backend,
        "kernel": snapshot.kernel,
        "chunk_map": None if m is None else chunk_map_to_dict(m),
    }
    return json.dumps(doc, separators=(",", ":"))
