"""pcpu-top --chunks on the live kernel: a chunk created since tracing began is drawn.

Per-CPU array maps of 32 KiB values (the allocator's largest size) are made after the
programs attach until the allocator creates a chunk; the test holds them, so the chunk
stays. Its picture must hold exactly the live traced allocations whose pointer minus
offset names it, and, read at a moment the kernel stood still, match a percpu_stats
entry: the kernel's own free bytes and allocation count equal the traced ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from waiting import wait_until

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.maps import read_live_records, read_traced_chunks
from pcpu_bpf.model.chunk_map import ChunkPicture
from pcpu_bpf.model.live_chunks import UNMATCHED
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.top.chunks import label, render_chunks

pytestmark = pytest.mark.privileged

VALUE, ENTRIES = 32768, 16  # 512 KiB per unit a map
MAX_MAPS = 256  # 128 MiB per unit: far more than the free space a host's chunks keep
TIMEOUT = 120.0


@pytest.fixture
def backend(live_backend: object) -> object:
    return live_backend


@pytest.fixture
def maps() -> Iterator[list[int]]:
    fds: list[int] = []
    try:
        yield fds
    finally:
        for fd in fds:
            syscalls.close(fd)


def new_chunk(backend, fds: list[int]) -> int:
    """Make maps until the chunk table holds a chunk; its base_addr."""
    while len(fds) < MAX_MAPS:
        bases, _, _ = read_traced_chunks(backend.loaded_set.maps)
        if bases:
            return bases[0]
        fds.append(syscalls.create_percpu_array(VALUE, ENTRIES, "pcpu_lc_test"))
    pytest.fail(f"{MAX_MAPS} maps of {VALUE * ENTRIES} bytes per unit made no new chunk")


def picture(s: Snapshot, base: int) -> ChunkPicture | None:
    assert s.chunk_map is not None
    return next((c for c in s.chunk_map.chunks if c.base_addr == base), None)


def traced_in(backend, base: int) -> tuple[int, int]:
    """(allocations, bytes rounded as pcpu_alloc() does) of the live entries in ``base``."""
    _, shift, _ = read_traced_chunks(backend.loaded_set.maps)
    live = backend.loaded_set.maps["pcpu_live"]
    sizes = [
        size
        for ptr, _, size, _, _, off in read_live_records(live, backend.live_capacity)
        if (ptr - off + shift) & (1 << 64) - 1 == base
    ]
    return len(sizes), sum(-(-n // 4) * 4 for n in sizes)


def test_a_chunk_created_since_tracing_began_is_drawn(backend, maps: list[int]) -> None:
    base = new_chunk(backend, maps)

    def agreeing() -> tuple[Snapshot, ChunkPicture] | None:
        # Other processes allocate too: the picture and a walk of the live table right
        # after it must see the same allocations, and the kernel must have stood still.
        s = backend.snapshot()
        c = picture(s, base)
        if (
            c is None
            or c.pages is None
            or traced_in(backend, base)
            != (
                c.nr_alloc,
                c.size - c.free_bytes,
            )
        ):
            return None
        if s.breakdown is None or not s.breakdown.settled or UNMATCHED in c.note:
            return None
        return s, c

    snap, c = wait_until(agreeing, what="a settled picture of the new chunk", timeout=TIMEOUT)
    assert c.nr_alloc > 0 and set(c.pages) - {"u", "e"}, c.pages
    assert snap.dropped["live_table_full"] == 0
    # Matched: percpu_stats has an entry with exactly these traced figures.
    ks = snap.kernel_stats
    assert ks is not None and ks.percpu_stats is not None
    assert any(
        (e.nr_alloc, e.free_bytes) == (c.nr_alloc, c.free_bytes) for e in ks.percpu_stats.chunks
    )
    assert c.size == ks.percpu_stats.info.unit_size
    assert snap.chunk_map is not None and "created since tracing began drawn" in snap.chunk_map.note
    text = render_chunks(snap, source="bpf", clock="")
    assert label(c) in text and "drawn 0" not in text
