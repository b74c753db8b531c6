"""The simulated allocator's chunks and the slot lists that order them (mm/percpu.c).

A ChunkPool holds what both the allocation path (allocator.py) and the balance work
(balance.py) act on: pcpu_chunk_lists with its slots, pcpu_nr_empty_pop_pages and
pcpu_nr_populated, the boot chunks, dynamic chunks made and unmade in vm areas
(pcpu_create_chunk() / pcpu_destroy_chunk() of mm/percpu-vm.c), and the hooks that
make population or chunk creation fail.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from pcpu_bpf.model.events import Event, PercpuCreateChunk, PercpuDestroyChunk
from pcpu_bpf.sim.chunk import (
    MIN_ALLOC_SIZE,
    PAGE_SIZE,
    Chunk,
    GlobalCounters,
    size_to_slot_raw,
)
from pcpu_bpf.sim.geometry import Geometry
from pcpu_bpf.sim.vmalloc import VMALLOC_END, VmSpace

# Empty populated pages kept for atomic allocations: below LOW an allocation schedules
# the balance work, which populates up to HIGH; above HIGH a free may reclaim a chunk.
PCPU_EMPTY_POP_PAGES_LOW = 2
PCPU_EMPTY_POP_PAGES_HIGH = 4

# pcpu_base_addr B: any page-aligned direct-map address; chosen so B + D lands in the
# kernel image the way __per_cpu_start does on 6.18 (__addr_to_pcpu_ptr() maps B there).
DEFAULT_PCPU_BASE_ADDR = 0xFFFF888627A00000


class ChunkPool:
    """The chunks, their slot lists and the global page counters of one allocator."""

    def __init__(
        self,
        geometry: Geometry,
        emit: Callable[[Event], None],
        *,
        vmalloc_end: int = VMALLOC_END,
        pcpu_base_addr: int = DEFAULT_PCPU_BASE_ADDR,
    ) -> None:
        g = geometry
        self.geometry = g
        self._emit = emit
        self.pcpu_base_addr = pcpu_base_addr
        self.unit_size = g.unit_size
        self.unit_pages = g.unit_size // PAGE_SIZE
        self.sidelined_slot = size_to_slot_raw(g.unit_size) + 1
        self.free_slot = self.sidelined_slot + 1
        self.to_depopulate_slot = self.free_slot + 1
        self.nr_slots = self.to_depopulate_slot + 1
        self.lists: list[list[Chunk]] = [[] for _ in range(self.nr_slots)]
        self._nonempty = 0  # bit s set iff lists[s] is not empty (search skips the rest)
        self.counters = GlobalCounters()
        # pcpu_atomic_alloc_failed: set by a failed atomic allocation, read by balance
        self.atomic_alloc_failed = False
        self._fail_populate = 0
        self._fail_create = 0
        # pcpu_stats.nr_chunks and nr_max_chunks (mm/percpu-internal.h)
        self.nr_chunks = self.nr_max_chunks = 0
        # each dynamic chunk's vm area: all units of the one group, no guard page
        self.area_size = g.nr_units * g.unit_size
        self.vm = VmSpace(nr_cpus=g.nr_possible_cpus, vmalloc_end=vmalloc_end)
        self._by_base: dict[int, Chunk] = {}
        self._bases: list[int] = []  # the keys of _by_base, ascending
        self._boot()

    # ---- boot: pcpu_setup_first_chunk() -----------------------------------------------

    def _boot_chunk(self, tmp_addr: int, map_size: int) -> Chunk:
        """pcpu_alloc_first_chunk(): a pre-populated chunk serving [tmp_addr, +map_size)."""
        aligned = tmp_addr & ~(PAGE_SIZE - 1)
        start_offset = tmp_addr - aligned
        region_size = -(-(start_offset + map_size) // PAGE_SIZE) * PAGE_SIZE
        c = Chunk(region_size // PAGE_SIZE, aligned, self.counters)
        c.start_offset = start_offset
        c.end_offset = region_size - start_offset - map_size
        c.immutable = True
        c.populated = (1 << c.nr_pages) - 1
        c.nr_populated = c.nr_empty_pop_pages = c.nr_pages
        c.free_bytes = map_size
        if start_offset:  # [0, start_offset) belongs to the previous area
            n = start_offset // MIN_ALLOC_SIZE
            c.hide(0, n, (0, n))
        if c.end_offset:
            n = c.end_offset // MIN_ALLOC_SIZE
            end_bit = (start_offset + map_size) // MIN_ALLOC_SIZE
            c.hide(c.map_bits - n, n, (end_bit, c.map_bits))
        return c

    def _boot(self) -> None:
        g = self.geometry
        b = self.pcpu_base_addr
        static_aligned = (g.static_size + 3) & ~3
        dyn_eff = g.dyn_size - (static_aligned - g.static_size)
        self.reserved_chunk: Chunk | None = None
        if g.reserved_size:
            self.reserved_chunk = self._boot_chunk(b + static_aligned, g.reserved_size)
            self.reserved_chunk.is_reserved = True
        fc = self._boot_chunk(b + static_aligned + g.reserved_size, dyn_eff)
        self.first_chunk = fc
        # plain assignment: whatever the hiding did to the global is overwritten
        self.counters.nr_empty_pop_pages = fc.nr_empty_pop_pages
        self.relocate(fc, -1)
        self.counters.nr_populated += (g.static_size + g.reserved_size + g.dyn_size) // PAGE_SIZE
        self.nr_chunks = self.nr_max_chunks = 1
        # percpu_create_chunk(B) fires here, before tracing: deliberately not emitted.

    # ---- read-only state --------------------------------------------------------------

    @property
    def nr_empty_pop_pages(self) -> int:
        """pcpu_nr_empty_pop_pages (signed; excludes reserved and isolated chunks)."""
        return self.counters.nr_empty_pop_pages

    @property
    def nr_populated(self) -> int:
        """pcpu_nr_populated: populated pages per unit, boot areas included."""
        return self.counters.nr_populated

    def chunk_lists(self) -> list[tuple[int, Chunk]]:
        """(slot, chunk) for every listed chunk, in slot then list order (the stats order)."""
        return [(s, c) for s, lst in enumerate(self.lists) for c in lst]

    def chunk_by_base(self, base_addr: int) -> Chunk | None:
        """The live dynamic or boot chunk whose base_addr is ``base_addr``."""
        for c in (self.first_chunk, self.reserved_chunk):
            if c is not None and c.base_addr == base_addr:
                return c
        return self._by_base.get(base_addr)

    def chunk_of(self, addr: int) -> Chunk | None:
        """pcpu_chunk_addr_search(): the chunk whose area holds ``addr``, if any."""
        for c in (self.first_chunk, self.reserved_chunk):
            if c is not None and (
                c.base_addr + c.start_offset
                <= addr
                < c.base_addr + c.nr_pages * PAGE_SIZE - c.end_offset
            ):
                return c
        i = bisect.bisect_right(self._bases, addr) - 1
        if i < 0:
            return None
        c = self._by_base[self._bases[i]]
        return c if addr < c.base_addr + self.unit_size else None

    def dynamic_chunks(self) -> list[Chunk]:
        """The live dynamic chunks, oldest first."""
        return list(self._by_base.values())

    def chunk_slot(self, c: Chunk) -> int:
        """pcpu_chunk_slot(): the slot the chunk's hints call for (may differ from its list)."""
        return c.slot(self.free_slot, self.unit_size)

    def size_to_slot(self, size: int) -> int:
        """pcpu_size_to_slot()."""
        return self.free_slot if size == self.unit_size else size_to_slot_raw(size)

    def meminfo_percpu_kb(self) -> int:
        """The /proc/meminfo ``Percpu:`` value in kB."""
        return self.counters.nr_populated * self.geometry.nr_units * PAGE_SIZE // 1024

    # ---- failure injection ------------------------------------------------------------

    def fail_next_populate(self, n: int = 1) -> None:
        """Make the next ``n`` pcpu_populate_chunk() calls fail."""
        self._fail_populate += n

    def fail_next_chunk_create(self, n: int = 1) -> None:
        """Make the next ``n`` pcpu_create_chunk() calls fail (no event)."""
        self._fail_create += n

    def populate_ok(self) -> bool:
        """pcpu_populate_chunk() outcome under the failure hook."""
        if self._fail_populate:
            self._fail_populate -= 1
            return False
        return True

    # ---- slot lists: pcpu_chunk_lists -------------------------------------------------

    def unlink(self, c: Chunk) -> None:
        """list_del(): take the chunk off its list."""
        if c.list_slot is not None:
            lst = self.lists[c.list_slot]
            lst.remove(c)
            if not lst:
                self._nonempty &= ~(1 << c.list_slot)
            c.list_slot = None

    def move(self, c: Chunk, slot: int, front: bool) -> None:
        """__pcpu_chunk_move(): the reserved chunk is on no list."""
        if c.is_reserved:
            return
        self.unlink(c)
        if front:
            self.lists[slot].insert(0, c)
        else:
            self.lists[slot].append(c)
        self._nonempty |= 1 << slot
        c.list_slot = slot

    def relocate(self, c: Chunk, oslot: int) -> None:
        """pcpu_chunk_relocate(): emptier -> head, fuller -> tail, same slot -> stay put."""
        if c.isolated:
            return
        nslot = c.slot(self.free_slot, self.unit_size)
        if oslot != nslot:
            self.move(c, nslot, oslot < nslot)

    def isolate(self, c: Chunk) -> None:
        """pcpu_isolate_chunk()."""
        if not c.isolated:
            c.isolated = True
            self.counters.nr_empty_pop_pages -= c.nr_empty_pop_pages
        self.move(c, self.to_depopulate_slot, True)

    def reintegrate(self, c: Chunk) -> None:
        """pcpu_reintegrate_chunk()."""
        if c.isolated:
            c.isolated = False
            self.counters.nr_empty_pop_pages += c.nr_empty_pop_pages
            self.relocate(c, -1)

    # ---- chunk life cycle (mm/percpu-vm.c) --------------------------------------------

    def create_chunk(self, base: int | None = None) -> Chunk | None:
        """pcpu_create_chunk() (vm backend): unpopulated, on no list, event emitted.

        ``base`` puts the chunk's vm area there instead of where pcpu_get_vm_areas() would
        (a replay giving a chunk the base the kernel gave it)."""
        if self._fail_create:
            self._fail_create -= 1
            return None
        c = self._new_chunk(base)
        if c is not None:
            self._emit(PercpuCreateChunk(c.base_addr))
        return c

    def restore_chunk(self, base: int | None = None) -> Chunk:
        """A dynamic chunk that already existed (a known state): no event, on no list."""
        c = self._new_chunk(base)
        if c is None:
            raise ValueError("no vm area left for a chunk")
        return c

    def _new_chunk(self, base: int | None) -> Chunk | None:
        if base is None:
            base = self.vm.get_area(self.area_size, self.geometry.atom_size)
            if base is None:
                return None
        else:
            self.vm.take(base, self.area_size)
        c = Chunk(self.unit_pages, base, self.counters)
        self._add(c)
        self.nr_chunks += 1
        self.nr_max_chunks = max(self.nr_max_chunks, self.nr_chunks)
        return c

    def destroy_chunk(self, c: Chunk) -> None:
        """pcpu_destroy_chunk(): the chunk is already off every list and depopulated."""
        self.nr_chunks -= 1
        self._emit(PercpuDestroyChunk(c.base_addr))
        del self._by_base[c.base_addr]
        self._bases.remove(c.base_addr)
        self.vm.free_area(c.base_addr, self.area_size)
        c.list_slot = None

    def _add(self, c: Chunk) -> None:
        self._by_base[c.base_addr] = c
        bisect.insort(self._bases, c.base_addr)
