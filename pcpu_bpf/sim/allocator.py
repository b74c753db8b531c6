"""A deterministic model of the kernel's dynamic percpu allocator (mm/percpu.c, 6.x).

It emits the five ``percpu:*`` tracepoint events with the kernel's field values at the
kernel's logical moments, and reports ``percpu_stats`` with mm/percpu-stats.c semantics.
Docstrings and comments name the kernel function each piece models. The chunks and their
lists are a ChunkPool (pool.py); this module adds the allocation and free paths, the
statistics and when the balance work (balance.py) runs.
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
from pcpu_bpf.sim.balance import balance_workfn
from pcpu_bpf.sim.chunk import MIN_ALLOC_SIZE, PAGE_SIZE, Chunk
from pcpu_bpf.sim.geometry import CONFIG_L, Geometry
from pcpu_bpf.sim.pool import (
    DEFAULT_PCPU_BASE_ADDR,
    PCPU_EMPTY_POP_PAGES_HIGH,
    PCPU_EMPTY_POP_PAGES_LOW,
    ChunkPool,
)
from pcpu_bpf.sim.vmalloc import VMALLOC_END

PCPU_MIN_UNIT_SIZE = 32 << 10  # also the largest allocation
PCPU_SLOT_FAIL_THRESHOLD = 3
BALANCE_LOG_LEN = 1000
_U64 = (1 << 64) - 1

DEFAULT_PER_CPU_DELTA = 0x77795BEF9000


def _bits(size: int) -> int:
    """Bitmap bits of a request: the size rounded up to PCPU_MIN_ALLOC_SIZE."""
    return (size + MIN_ALLOC_SIZE - 1) // MIN_ALLOC_SIZE


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


class Allocator(ChunkPool):
    """The percpu allocator: a ChunkPool with the alloc and free paths, events and stats."""

    def __init__(
        self,
        geometry: Geometry = CONFIG_L,
        *,
        balance: str = "manual",
        sink: Callable[[Event], None] | None = None,
        vmalloc_end: int = VMALLOC_END,
        per_cpu_delta: int = DEFAULT_PER_CPU_DELTA,
        pcpu_base_addr: int = DEFAULT_PCPU_BASE_ADDR,
    ) -> None:
        g = geometry
        self.policy = BalancePolicy.parse(balance)
        self.events: list[Event] = []
        super().__init__(
            g,
            sink if sink is not None else self.events.append,
            vmalloc_end=vmalloc_end,
            pcpu_base_addr=pcpu_base_addr,
        )
        self.per_cpu_delta = per_cpu_delta
        self._balance_pending = False
        # (op number, "requested" | "run"), the most recent BALANCE_LOG_LEN only: a sim
        # daemon runs for days, and only tests and debugging read it
        self.balance_log: deque[tuple[int, str]] = deque(maxlen=BALANCE_LOG_LEN)
        self.last_rejection: str | None = None
        self._ops = 0
        self._fail_memcg = 0
        # pcpu_obj_full_size(): size * (nr_possible + 2) with memcg kmem
        self._bytes_alloc_mult = g.nr_possible_cpus + (2 if g.memcg_kmem else 0)
        # struct percpu_stats pcpu_stats (mm/percpu-internal.h); the pool counts chunks
        self.nr_alloc = self.nr_dealloc = self.nr_cur_alloc = self.nr_max_alloc = 0
        self.min_alloc_size = g.unit_size
        self.max_alloc_size = 0

    # ---- failure injection ------------------------------------------------------------

    def fail_next_memcg_charge(self, n: int = 1) -> None:
        """Make the next ``n`` memcg pre-charges fail (only charged requests consume one)."""
        self._fail_memcg += n

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
                            self.move(c, 0, True)  # parked; slot 0 is never searched
                        continue
                    off = self._alloc_area(c, bits, bit_align, off)
                    if off >= 0:
                        self.reintegrate(c)  # it may have come from the sidelined list
                        return self._found(c, off, size, align, reserved, is_atomic, gfp, call_site)
            if is_atomic:
                self._fail(reserved, is_atomic, size, align)
                return None
            if lists[free_slot]:  # a fully free chunk fits any legal request
                raise RuntimeError("percpu model: free-slot chunk refused a legal request")
            new = self.create_chunk()
            if new is None:
                self._fail(reserved, is_atomic, size, align)
                return None
            self.relocate(new, -1)  # head of the free slot; goto restart

    # ---- a chunk chosen from outside: known states and recordings ---------------------

    def search_chunk(self, c: Chunk, size: int, align: int, *, gfp: int = GFP_KERNEL) -> int | None:
        """The byte offset the allocation path would take in chunk ``c`` (its
        pcpu_find_block_fit() and pcpu_alloc_area() search), or None; nothing changes."""
        bits, bit_align = _bits(size), _bits(max(align, 4))
        start = c.find_block_fit(bits, bit_align, not gfp & GFP_DIRECT_RECLAIM)
        if start < 0:
            return None
        off = c.alloc_area(bits, bit_align, start, dry_run=True)
        return off if off >= 0 else None

    def alloc_in_chunk(
        self,
        c: Chunk,
        size: int,
        align: int,
        *,
        at: int | None = None,
        reserved: bool = False,
        gfp: int = GFP_KERNEL,
        call_site: int = 0,
    ) -> int | None:
        """An allocation in chunk ``c``, where its search lands, or at byte offset ``at``
        (the kernel's choice, from a recording): statistics, population and the event as
        pcpu_alloc_noprof() does them. The pointer, or None when it does not fit there
        (nothing changed) or population failed (fail event)."""
        self._ops += 1
        is_atomic = not gfp & GFP_DIRECT_RECLAIM
        size = _bits(size) * MIN_ALLOC_SIZE
        align = max(align, 4)
        bits = size // MIN_ALLOC_SIZE
        oslot = c.slot(self.free_slot, self.unit_size)
        if at is None:
            start = c.find_block_fit(bits, align // 4, is_atomic)
            off = c.alloc_area(bits, align // 4, start) if start >= 0 else -1
            if off < 0:
                return None
        else:
            if at % MIN_ALLOC_SIZE or not c.is_free(at // MIN_ALLOC_SIZE, bits):
                return None
            c.place(at // MIN_ALLOC_SIZE, bits)
            off = at
        self.relocate(c, oslot)
        self.reintegrate(c)
        ptr = self._found(c, off, size, align, reserved, is_atomic, gfp, call_site)
        self._after_op()
        return ptr

    def seed(self, c: Chunk, off: int, size: int) -> None:
        """A live allocation of a known state at byte offset ``off``: maps, hints and the
        statistics, no event, no population (the state says which pages are backed)."""
        bits = _bits(size)
        if off % MIN_ALLOC_SIZE or not c.is_free(off // MIN_ALLOC_SIZE, bits):
            raise ValueError(f"{size} bytes at offset {off} are not free in the chunk")
        oslot = c.slot(self.free_slot, self.unit_size)
        c.place(off // MIN_ALLOC_SIZE, bits)
        self.relocate(c, oslot)
        size = bits * MIN_ALLOC_SIZE
        self.nr_alloc += 1
        self.nr_cur_alloc += 1
        self.nr_max_alloc = max(self.nr_max_alloc, self.nr_cur_alloc)
        self.min_alloc_size = min(self.min_alloc_size, size)
        self.max_alloc_size = max(self.max_alloc_size, size)
        c.nr_alloc += 1
        c.max_alloc_size = max(c.max_alloc_size, size)

    def release_chunk(self, c: Chunk) -> None:
        """Depopulate and destroy a dynamic chunk now (a recording says the kernel did)."""
        self.unlink(c)
        for rs, re in c.page_runs(True):
            c.chunk_depopulated(rs, re)  # an isolated chunk's pages left the global count
        c.isolated = False
        self.destroy_chunk(c)

    def _alloc_area(self, c: Chunk, bits: int, align: int, start: int) -> int:
        """pcpu_alloc_area(): the chunk work plus the relocate."""
        oslot = c.slot(self.free_slot, self.unit_size)
        off = c.alloc_area(bits, align, start)
        if off >= 0:
            self.relocate(c, oslot)
        return off

    def _free_area(self, c: Chunk, off: int) -> int:
        """pcpu_free_area(): stats, chunk work, relocate."""
        self.nr_dealloc += 1
        self.nr_cur_alloc -= 1
        c.nr_alloc -= 1
        oslot = c.slot(self.free_slot, self.unit_size)
        freed = c.free_area(off)
        self.relocate(c, oslot)
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
                    if not self.populate_ok():
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

    def free(self, ptr: int) -> None:
        """free_percpu(): ptr 0 is a no-op; a pointer to no live allocation raises ValueError."""
        if not ptr:
            return
        self._ops += 1
        addr = (ptr - self.per_cpu_delta) & _U64
        c = self.chunk_of(addr)
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
            self.isolate(c)
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

    @property
    def balance_pending(self) -> bool:
        """True while balance work is scheduled and has not run (schedule_work pending)."""
        return self._balance_pending

    def _schedule_balance(self) -> None:
        """pcpu_schedule_balance_work(): idempotent while pending."""
        if not self._balance_pending:
            self._balance_pending = True
            self.balance_log.append((self._ops, "requested"))

    def run_balance(self, *, chunks: bool = True) -> None:
        """pcpu_balance_workfn(): run the balance work now (clears balance_pending);
        ``chunks=False``: without creating or destroying chunks (see balance_workfn)."""
        self._balance_pending = False
        self.balance_log.append((self._ops, "run"))
        balance_workfn(self, chunks=chunks)

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
