"""A simulated allocator started from a known state instead of from boot.

The state names what is live: allocations in the boot chunks, and dynamic chunks at
given base addresses with their live allocations and backed pages. ``build_allocator``
boots the geometry's allocator (pcpu_setup_first_chunk()), then puts each allocation
where the state says, with the hints, slots and statistics the allocation path would
leave; nothing is emitted, as if it all happened before tracing began.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.model.events import Event
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.chunk import PAGE_SIZE, Chunk
from pcpu_bpf.sim.geometry import CONFIG_L, Geometry

# (byte offset from the chunk's base_addr, size in bytes)
Area = tuple[int, int]


@dataclass(frozen=True, slots=True)
class ChunkState:
    """A dynamic chunk of a known state."""

    allocations: Sequence[Area] = ()
    # None: where pcpu_get_vm_areas() puts the next area
    base_addr: int | None = None
    # Backed page indexes; None: the pages the allocations touch. Must cover those.
    populated: Sequence[int] | None = None


@dataclass(frozen=True, slots=True)
class KnownState:
    """What is live: boot chunk allocations and dynamic chunks, in list order."""

    first_chunk: Sequence[Area] = ()
    reserved_chunk: Sequence[Area] = ()
    chunks: Sequence[ChunkState] = ()


def build_allocator(
    state: KnownState,
    geometry: Geometry = CONFIG_L,
    *,
    balance: str = "manual",
    sink: Callable[[Event], None] | None = None,
    per_cpu_delta: int | None = None,
    pcpu_base_addr: int | None = None,
) -> Allocator:
    """An Allocator in ``state``; a state the allocator cannot be in is a ScenarioError."""
    options: dict[str, int] = {}
    if per_cpu_delta is not None:
        options["per_cpu_delta"] = per_cpu_delta
    if pcpu_base_addr is not None:
        options["pcpu_base_addr"] = pcpu_base_addr
    a = Allocator(geometry, balance=balance, sink=sink, **options)
    _seed(a, a.first_chunk, state.first_chunk, "the first chunk")
    if state.reserved_chunk:
        if a.reserved_chunk is None:
            raise ScenarioError(
                "the state has reserved allocations; the geometry no reserved chunk"
            )
        _seed(a, a.reserved_chunk, state.reserved_chunk, "the reserved chunk")
    chunks = [_restore(a, i, cs) for i, cs in enumerate(state.chunks)]
    for c in chunks:  # the given list order, each on the list its hints call for
        a.unlink(c)
        a.move(c, a.chunk_slot(c), False)
    return a


def _restore(a: Allocator, i: int, cs: ChunkState) -> Chunk:
    where = f"chunk {i}" + (f" at {cs.base_addr:#x}" if cs.base_addr is not None else "")
    try:
        c = a.restore_chunk(cs.base_addr)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    _check_bounds(c, cs.allocations, where)
    touched = {p for off, size in cs.allocations for p in _pages(off, size)}
    pages = touched if cs.populated is None else set(cs.populated)
    if bad := sorted(p for p in pages if not 0 <= p < c.nr_pages):
        raise ScenarioError(f"{where}: page {bad[0]} is outside its {c.nr_pages} pages")
    if bare := sorted(touched - pages):
        raise ScenarioError(f"{where}: an allocation uses page {bare[0]}, which is not populated")
    for p in sorted(pages):
        c.chunk_populated(p, p + 1)
    a.relocate(c, -1)
    _seed(a, c, cs.allocations, where)
    return c


def _pages(off: int, size: int) -> range:
    return range(off // PAGE_SIZE, (off + max(size, 1) - 1) // PAGE_SIZE + 1)


def _check_bounds(c: Chunk, areas: Sequence[Area], where: str) -> None:
    for off, size in areas:
        if size <= 0 or off < 0 or off + size > c.nr_pages * PAGE_SIZE:
            raise ScenarioError(f"{where}: {size} bytes at offset {off} do not fit in the chunk")


def _seed(a: Allocator, c: Chunk, areas: Sequence[Area], where: str) -> None:
    _check_bounds(c, areas, where)
    for off, size in sorted(areas):
        try:
            a.seed(c, off, size)
        except ValueError:
            raise ScenarioError(
                f"{where}: {size} bytes at offset {off} overlap another allocation "
                "or the area the chunk hides"
            ) from None
