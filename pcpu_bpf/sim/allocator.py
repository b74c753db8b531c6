"""A deterministic model of the kernel's dynamic percpu allocator (mm/percpu.c, 6.x).

It emits the five ``percpu:*`` tracepoint events with the kernel's field values at the
kernel's logical moments, and reports ``percpu_stats`` with mm/percpu-stats.c semantics.
Docstrings and comments name the kernel function each piece models.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.model.events import (
    GFP_ACCOUNT,
    GFP_DIRECT_RECLAIM,
    GFP_KERNEL,
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.kernel_stats import (
    CHUNK_FIRST,
    CHUNK_NORMAL,
    CHUNK_RESERVED,
    CHUNK_SIDELINED,
    CHUNK_TO_DEPOPULATE,
    ChunkStats,
    GlobalStats,
    PercpuStats,
)
from pcpu_bpf.sim import balance
from pcpu_bpf.sim.chunk import (
    MIN_ALLOC_SIZE,
    PAGE_SIZE,
    Chunk,
    GlobalCounters,
    size_to_slot_raw,
)
from pcpu_bpf.sim.geometry import CONFIG_L, Geometry

PCPU_MIN_UNIT_SIZE = 32 << 10  # also the largest allocation
PCPU_SLOT_FAIL_THRESHOLD = 3
PCPU_EMPTY_POP_PAGES_LOW = 2
PCPU_EMPTY_POP_PAGES_HIGH = 4
BALANCE_LOG_LEN = 1000
_U64 = (1 << 64) - 1

DEFAULT_TOP_ADDR = 0xFFFFE90000000000
DEFAULT_PER_CPU_DELTA = 0x77795BEF9000
# pcpu_base_addr B: any page-aligned direct-map address; chosen so B + D lands in the
# kernel image the way __per_cpu_start does on 6.18 (__addr_to_pcpu_ptr() maps B there).
DEFAULT_PCPU_BASE_ADDR = 0xFFFF888627A00000


@dataclass(frozen=True, slots=True)
class BalancePolicy:
    """When the simulated balance work runs: "manual", "eager" or "every:N" operations."""

    kind: str
    every: int = 0

    @classmethod
    def parse(cls, text: str) -> BalancePolicy:
        """Parse "manual", "eager" or "every:N" (N >= 1)."""
        if text in ("manual", "eager"):
            return cls(text)
        if text.startswith("every:"):
            try:
                n = int(text[6:])
            except ValueError:
                n = 0
            if n >= 1:
                return cls("every", n)
        raise ScenarioError(f"bad balance policy {text!r}: use manual, eager or every:N")


class Allocator:
    """The percpu allocator: chunks, slot lists, balance work, events and stats."""

    def __init__(
        self,
        geometry: Geometry = CONFIG_L,
        *,
        balance: str = "manual",
        sink: Callable[[Event], None] | None = None,
        top_addr: int = DEFAULT_TOP_ADDR,
        per_cpu_delta: int = DEFAULT_PER_CPU_DELTA,
        pcpu_base_addr: int = DEFAULT_PCPU_BASE_ADDR,
    ) -> None:
        g = geometry
        self.geometry = g
        self.policy = BalancePolicy.parse(balance)
        self.events: list[Event] = []
        self._emit: Callable[[Event], None] = sink if sink is not None else self.events.append
        self.per_cpu_delta = per_cpu_delta
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
        self.atomic_alloc_failed = False
        self._balance_pending = False
        # (op number, "requested" | "run"), the most recent BALANCE_LOG_LEN only: a sim
        # daemon runs for days, and only tests and debugging read it
        self.balance_log: deque[tuple[int, str]] = deque(maxlen=BALANCE_LOG_LEN)
        self.last_rejection: str | None = None
        self._ops = 0
        self._fail_populate = 0
        self._fail_create = 0
        self._fail_memcg = 0
        # pcpu_obj_full_size(): size * (nr_possible + 2) with memcg kmem
        self._bytes_alloc_mult = g.nr_possible_cpus + (2 if g.memcg_kmem else 0)
        # struct percpu_stats pcpu_stats (mm/percpu-internal.h)
        self.nr_alloc = self.nr_dealloc = self.nr_cur_alloc = self.nr_max_alloc = 0
        self.nr_chunks = self.nr_max_chunks = 0
        self.min_alloc_size = g.unit_size
        self.max_alloc_size = 0
        # vm areas handed out top-down, as pcpu_get_vm_areas() does: deterministic bases
        span = g.nr_units * g.unit_size + PAGE_SIZE
        self._span = -(-span // g.atom_size) * g.atom_size
        self._top = top_addr
        self._next_base = top_addr
        self._free_bases: list[int] = []
        self._by_base: dict[int, Chunk] = {}
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
        self._relocate(fc, -1)
        self.counters.nr_populated += (g.static_size + g.reserved_size + g.dyn_size) // PAGE_SIZE
        self.nr_chunks = self.nr_max_chunks = 1
        # percpu_create_chunk(B) fires here, before tracing: deliberately not emitted.

    # ---- read-only state --------------------------------------------------------------

    @property
    def balance_pending(self) -> bool:
        """True while balance work is scheduled and has not run (schedule_work pending)."""
        return self._balance_pending

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

    def fail_next_memcg_charge(self, n: int = 1) -> None:
        """Make the next ``n`` memcg pre-charges fail (only charged requests consume one)."""
        self._fail_memcg += n

    # ---- slot lists: pcpu_chunk_lists -------------------------------------------------

    def _unlink(self, c: Chunk) -> None:
        """list_del(): take the chunk off its list."""
        if c.list_slot is not None:
            lst = self.lists[c.list_slot]
            lst.remove(c)
            if not lst:
                self._nonempty &= ~(1 << c.list_slot)
            c.list_slot = None

    def _move(self, c: Chunk, slot: int, front: bool) -> None:
        """__pcpu_chunk_move(): the reserved chunk is on no list."""
        if c.is_reserved:
            return
        self._unlink(c)
        if front:
            self.lists[slot].insert(0, c)
        else:
            self.lists[slot].append(c)
        self._nonempty |= 1 << slot
        c.list_slot = slot

    def _relocate(self, c: Chunk, oslot: int) -> None:
        """pcpu_chunk_relocate(): emptier -> head, fuller -> tail, same slot -> stay put."""
        if c.isolated:
            return
        nslot = c.slot(self.free_slot, self.unit_size)
        if oslot != nslot:
            self._move(c, nslot, oslot < nslot)

    def _isolate(self, c: Chunk) -> None:
        """pcpu_isolate_chunk()."""
        if not c.isolated:
            c.isolated = True
            self.counters.nr_empty_pop_pages -= c.nr_empty_pop_pages
        self._move(c, self.to_depopulate_slot, True)

    def _reintegrate(self, c: Chunk) -> None:
        """pcpu_reintegrate_chunk()."""
        if c.isolated:
            c.isolated = False
            self.counters.nr_empty_pop_pages += c.nr_empty_pop_pages
            self._relocate(c, -1)

    def _schedule_balance(self) -> None:
        """pcpu_schedule_balance_work(): idempotent while pending."""
        if not self._balance_pending:
            self._balance_pending = True
            self.balance_log.append((self._ops, "requested"))

    # ---- chunk life cycle (mm/percpu-vm.c) --------------------------------------------

    def _populate_ok(self) -> bool:
        """pcpu_populate_chunk() outcome under the failure hook."""
        if self._fail_populate:
            self._fail_populate -= 1
            return False
        return True

    def _create_chunk(self) -> Chunk | None:
        """pcpu_create_chunk() (vm backend): unpopulated, on no list, event emitted."""
        if self._fail_create:
            self._fail_create -= 1
            return None
        if self._free_bases:
            base = max(self._free_bases)  # vmalloc is top-down: highest free area first
            self._free_bases.remove(base)
        else:
            self._next_base -= self._span
            base = self._next_base
        c = Chunk(self.unit_pages, base, self.counters)
        self._by_base[base] = c
        self.nr_chunks += 1
        self.nr_max_chunks = max(self.nr_max_chunks, self.nr_chunks)
        self._emit(PercpuCreateChunk(base))
        return c

    def _destroy_chunk(self, c: Chunk) -> None:
        """pcpu_destroy_chunk(): the chunk is already off every list and depopulated."""
        self.nr_chunks -= 1
        self._emit(PercpuDestroyChunk(c.base_addr))
        del self._by_base[c.base_addr]
        self._free_bases.append(c.base_addr)
        c.list_slot = None

    # ---- allocation: pcpu_alloc_noprof() ----------------------------------------------

    def alloc(
        self,
        size: int,
        align: int,
        *,
        reserved: bool = False,
        gfp: int = GFP_KERNEL,
        call_site: int = 0,
    ) -> int | None:
        """pcpu_alloc_noprof(): the percpu pointer, or None (event or silent rejection)."""
        self.last_rejection = None
        self._ops += 1
        is_atomic = not (gfp & GFP_DIRECT_RECLAIM)
        if align < 4:
            align = 4
        size = (size + 3) & ~3
        # the early returns of pcpu_alloc_noprof(): no tracepoint, no stats
        if size <= 0 or size > PCPU_MIN_UNIT_SIZE:
            self.last_rejection = f"illegal size {size} (must be 1..{PCPU_MIN_UNIT_SIZE})"
        elif align > PAGE_SIZE or align & (align - 1):
            self.last_rejection = f"illegal alignment {align}"
        elif self._fail_memcg and gfp & GFP_ACCOUNT and self.geometry.memcg_kmem:
            self._fail_memcg -= 1
            self.last_rejection = "memcg charge failed"
        if self.last_rejection is not None:
            self._after_op()
            return None
        ptr = self._alloc(size, align, reserved, is_atomic, gfp, call_site)
        self._after_op()
        return ptr

    def _alloc(
        self, size: int, align: int, reserved: bool, is_atomic: bool, gfp: int, call_site: int
    ) -> int | None:
        bits = size >> 2
        bit_align = align >> 2
        rc = self.reserved_chunk
        if reserved and rc is not None:
            off = rc.find_block_fit(bits, bit_align, is_atomic)
            if off >= 0:
                off = self._alloc_area(rc, bits, bit_align, off)
            if off < 0:
                self._fail(reserved, is_atomic, size, align)
                return None
            return self._found(rc, off, size, align, reserved, is_atomic, gfp, call_site)
        # a reserved request without a reserved chunk falls through (still reserved=1)
        lists = self.lists
        first_slot = self.size_to_slot(size)
        free_slot = self.free_slot
        span = (1 << (free_slot + 1 - first_slot)) - 1
        while True:  # restart:
            # slots first_slot..free_slot that have chunks; only slots < first_slot
            # (slot 0) change during the scan, so a snapshot of the mask is exact
            todo = (self._nonempty >> first_slot) & span
            while todo:
                low = todo & -todo
                todo ^= low
                slot = first_slot + low.bit_length() - 1
                for c in tuple(lists[slot]):
                    off = c.find_block_fit(bits, bit_align, is_atomic)
                    if off < 0:
                        if slot < PCPU_SLOT_FAIL_THRESHOLD:
                            self._move(c, 0, True)  # parked; slot 0 is never searched
                        continue
                    off = self._alloc_area(c, bits, bit_align, off)
                    if off >= 0:
                        self._reintegrate(c)  # it may have come from the sidelined list
                        return self._found(c, off, size, align, reserved, is_atomic, gfp, call_site)
            if is_atomic:
                self._fail(reserved, is_atomic, size, align)
                return None
            if lists[free_slot]:  # a fully free chunk fits any legal request
                raise RuntimeError("percpu model: free-slot chunk refused a legal request")
            new = self._create_chunk()
            if new is None:
                self._fail(reserved, is_atomic, size, align)
                return None
            self._relocate(new, -1)  # head of the free slot; goto restart

    def _alloc_area(self, c: Chunk, bits: int, align: int, start: int) -> int:
        """pcpu_alloc_area(): the chunk work plus the relocate."""
        oslot = c.slot(self.free_slot, self.unit_size)
        off = c.alloc_area(bits, align, start)
        if off >= 0:
            self._relocate(c, oslot)
        return off

    def _free_area(self, c: Chunk, off: int) -> int:
        """pcpu_free_area(): stats, chunk work, relocate."""
        self.nr_dealloc += 1
        self.nr_cur_alloc -= 1
        c.nr_alloc -= 1
        oslot = c.slot(self.free_slot, self.unit_size)
        freed = c.free_area(off)
        self._relocate(c, oslot)
        return freed

    def _found(
        self,
        c: Chunk,
        off: int,
        size: int,
        align: int,
        reserved: bool,
        is_atomic: bool,
        gfp: int,
        call_site: int,
    ) -> int | None:
        # pcpu_stats_area_alloc()
        self.nr_alloc += 1
        self.nr_cur_alloc += 1
        if self.nr_cur_alloc > self.nr_max_alloc:
            self.nr_max_alloc = self.nr_cur_alloc
        if size < self.min_alloc_size:
            self.min_alloc_size = size
        if size > self.max_alloc_size:
            self.max_alloc_size = size
        c.nr_alloc += 1
        if size > c.max_alloc_size:
            c.max_alloc_size = size
        # pcpu_alloc_noprof() checks the global right after pcpu_alloc_area(), before
        # populating: it sees pcpu_block_update_hint_alloc()'s transient decrement
        if self.counters.nr_empty_pop_pages < PCPU_EMPTY_POP_PAGES_LOW:
            self._schedule_balance()
        if not is_atomic:
            p0 = off >> 12
            p1 = (off + size + PAGE_SIZE - 1) >> 12
            want = (1 << (p1 - p0)) - 1
            if (c.populated >> p0) & want != want:
                for rs, re in c.page_runs(False, p0, p1):
                    if not self._populate_ok():
                        self._free_area(c, off)  # counts a dealloc, no free event
                        self._fail(reserved, is_atomic, size, align)
                        return None
                    c.chunk_populated(rs, re)
        base = c.base_addr
        ptr = (base + off + self.per_cpu_delta) & _U64
        self._emit(
            PercpuAlloc(
                call_site,
                reserved,
                is_atomic,
                size,
                align,
                base,
                off,
                ptr,
                size * self._bytes_alloc_mult,
                gfp,
            )
        )
        return ptr

    def _fail(self, reserved: bool, is_atomic: bool, size: int, align: int) -> None:
        """The kernel's fail: label."""
        self._emit(PercpuAllocFail(reserved, is_atomic, size, align))
        if is_atomic:
            self.atomic_alloc_failed = True
            self._schedule_balance()

    # ---- free: free_percpu() ----------------------------------------------------------

    def _chunk_of(self, addr: int) -> Chunk | None:
        """pcpu_chunk_addr_search()."""
        for c in (self.first_chunk, self.reserved_chunk):
            if c is not None and (
                c.base_addr + c.start_offset
                <= addr
                < c.base_addr + c.nr_pages * PAGE_SIZE - c.end_offset
            ):
                return c
        if addr >= self._top:
            return None
        k = -(-(self._top - addr) // self._span)
        c = self._by_base.get(self._top - k * self._span)
        if c is None or addr >= c.base_addr + self.unit_size:
            return None
        return c

    def free(self, ptr: int) -> None:
        """free_percpu(): ptr 0 is a no-op; a pointer to no live allocation raises ValueError."""
        if not ptr:
            return
        self._ops += 1
        addr = (ptr - self.per_cpu_delta) & _U64
        c = self._chunk_of(addr)
        off = addr - c.base_addr if c is not None else -1
        bit = off >> 2
        # a live area starts on a set alloc bit that is also a boundary bit (never
        # set strictly inside a live area)
        if c is None or off & 3 or not (c.amap[bit >> 10] & c.bmap[bit >> 10]) >> (bit & 1023) & 1:
            raise ValueError(f"free_percpu: {ptr:#x} is not a live percpu allocation")
        self._free_area(c, off)
        need_balance = False
        if not c.isolated and c.free_bytes == self.unit_size:
            # a second fully free chunk: let balance destroy one
            need_balance = any(pos is not c for pos in self.lists[self.free_slot])
        elif self._should_reclaim(c):
            self._isolate(c)
            need_balance = True
        self._emit(PercpuFree(c.base_addr, off, ptr))
        if need_balance:
            self._schedule_balance()
        self._after_op()

    def _should_reclaim(self, c: Chunk) -> bool:
        """pcpu_should_reclaim_chunk() (vm backend)."""
        if c is self.first_chunk or c is self.reserved_chunk:
            return False
        return (c.isolated and c.nr_empty_pop_pages != 0) or (
            self.counters.nr_empty_pop_pages > PCPU_EMPTY_POP_PAGES_HIGH + c.nr_empty_pop_pages
            and c.nr_empty_pop_pages >= c.nr_pages // 4
        )

    # ---- balance: pcpu_balance_workfn() -----------------------------------------------

    def run_balance(self) -> None:
        """pcpu_balance_workfn(): run the balance work now (clears balance_pending)."""
        self._balance_pending = False
        self.balance_log.append((self._ops, "run"))
        balance.balance_workfn(self)

    def _after_op(self) -> None:
        """Apply the balance policy after one alloc()/free() call."""
        if not self._balance_pending:
            return
        pol = self.policy
        if pol.kind == "eager" or (pol.kind == "every" and self._ops % pol.every == 0):
            self.run_balance()

    # ---- percpu_stats: percpu_stats_show() (mm/percpu-stats.c) ------------------------

    def _chunk_stats(self, c: Chunk, kind: str) -> ChunkStats:
        sum_frag, max_frag, cur_min, cur_med, cur_max = c.frag_stats()
        return ChunkStats(
            kind=kind,
            nr_alloc=c.nr_alloc,
            max_alloc_size=c.max_alloc_size,
            empty_pop_pages=c.nr_empty_pop_pages,
            first_bit=c.chunk_md.first_free,
            free_bytes=c.free_bytes,
            contig_bytes=c.chunk_md.contig_hint * MIN_ALLOC_SIZE,
            sum_frag=sum_frag,
            max_frag=max_frag,
            cur_min_alloc=cur_min,
            cur_med_alloc=cur_med,
            cur_max_alloc=cur_max,
        )

    def percpu_stats(self) -> PercpuStats:
        """percpu_stats_show() as data: reserved chunk first, then slot and list order."""
        g = self.geometry
        chunks: list[ChunkStats] = []
        if self.reserved_chunk is not None:
            chunks.append(self._chunk_stats(self.reserved_chunk, CHUNK_RESERVED))
        for slot, c in self.chunk_lists():
            if c is self.first_chunk:
                kind = CHUNK_FIRST
            elif slot == self.to_depopulate_slot:
                kind = CHUNK_TO_DEPOPULATE
            elif slot == self.sidelined_slot:
                kind = CHUNK_SIDELINED
            else:
                kind = CHUNK_NORMAL
            chunks.append(self._chunk_stats(c, kind))
        return PercpuStats.of(
            info=g.allocation_info(),
            globals=GlobalStats(
                nr_alloc=self.nr_alloc,
                nr_dealloc=self.nr_dealloc,
                nr_cur_alloc=self.nr_cur_alloc,
                nr_max_alloc=self.nr_max_alloc,
                nr_chunks=self.nr_chunks,
                nr_max_chunks=self.nr_max_chunks,
                min_alloc_size=self.min_alloc_size,
                max_alloc_size=self.max_alloc_size,
                empty_pop_pages=self.counters.nr_empty_pop_pages,
            ),
            chunks=tuple(chunks),
        )
