"""The reference aggregator: the executable specification of the BPF programs.

`Aggregator.apply` does to a `Tables` exactly what bpf_programs/pcpu.bpf.c does to the BPF
maps for the same event, including the fixed capacities: a full table drops the new
entry and counts it by reason, it never evicts. Tests feed identical event streams to
both and require equal Snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pcpu_bpf.model.events import (
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.layout import (
    CHUNK_CAPACITY,
    DEFAULT_LIVE_CAPACITY,
    DEFAULT_SITE_CAPACITY,
    KEPT_MASK,
    failure_index,
    size_slot,
)
from pcpu_bpf.model.owners import Ranges, owner_address
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.model.tables import (
    LiveEntry,
    SiteValue,
    SnapshotContext,
    Tables,
    tables_to_snapshot,
)


class Aggregator:
    """Events in, Snapshot out, with the BPF programs' semantics."""

    def __init__(
        self,
        symbolize: Callable[[int], str],
        *,
        possible_cpus: int,
        live_capacity: int = DEFAULT_LIVE_CAPACITY,
        site_capacity: int = DEFAULT_SITE_CAPACITY,
        clock: Callable[[], float] = lambda: 0.0,
        helper_ranges: Ranges | None = None,
    ) -> None:
        """``clock`` stamps each live entry (the programs use CLOCK_BOOTTIME); the
        simulator passes its simulated time. ``helper_ranges``: owners on, behind the
        helpers whose code these are (None: off, as the programs without OWNERS)."""
        self._symbolize = symbolize
        self._helper_ranges = helper_ranges
        self._possible_cpus = possible_cpus
        self._live_capacity = live_capacity
        self._site_capacity = site_capacity
        self._clock = clock
        self.tables = Tables()
        self._live: dict[int, LiveEntry] = {}
        # The chunk table's slots, as pcpu_chunks: a base_addr, or 0 when free.
        self._chunk_slots = [0] * CHUNK_CAPACITY

    def live_entries(self) -> Iterable[LiveEntry]:
        """The live table's entries (for the age walk)."""
        return self._live.values()

    def live_table(self) -> dict[int, LiveEntry]:
        """The live table: percpu pointer -> its entry."""
        return dict(self._live)

    def apply(self, event: Event) -> None:
        """Account one event."""
        t = self.tables
        match event:
            case PercpuAlloc():
                self._alloc(event)
            case PercpuFree(ptr=ptr):
                self._free(ptr)
            case PercpuAllocFail(reserved=reserved, is_atomic=atomic, size=size):
                t.failures[failure_index(atomic, reserved)] += 1
                t.failed_sizes.counts[size_slot(size)] += 1
                t.failed_sizes.sum += size
            case PercpuCreateChunk(base_addr=base):
                t.chunk_creations += 1
                self._remember_chunk(base)
            case PercpuDestroyChunk(base_addr=base):
                t.chunk_destructions += 1
                self._forget_chunk(base)

    def _remember_chunk(self, base: int) -> None:
        # The first free slot; a base of 0 (none) is not remembered.
        if not base:
            return
        slots = self._chunk_slots
        if 0 not in slots:
            self.tables.dropped["chunk_table_full"] += 1
            return
        slots[slots.index(0)] = base
        self._chunks_changed()

    def _forget_chunk(self, base: int) -> None:
        # A chunk created before tracing began is in no slot.
        if base and base in self._chunk_slots:
            self._chunk_slots[self._chunk_slots.index(base)] = 0
            self._chunks_changed()

    def _chunks_changed(self) -> None:
        self.tables.traced_chunks = [b for b in self._chunk_slots if b]

    def _alloc(self, ev: PercpuAlloc) -> None:
        t = self.tables
        # Kernels before 5.19 report neither: the site is "unknown" (address 0) and the
        # memory used is size x possible CPUs, as the BPF program computes it.
        call_site = ev.call_site or 0
        # The memcg extension: what bytes_alloc counts beyond the size on every possible
        # CPU (slab memory, not Percpu); none without bytes_alloc. Both are kept in 32
        # bits, with the programs' u64 wrap-around.
        extension = 0
        if ev.bytes_alloc is not None:
            extension = (ev.bytes_alloc - ev.size * self._possible_cpus) & KEPT_MASK
        size = ev.size & KEPT_MASK
        t.sizes.counts[size_slot(ev.size)] += 1
        t.sizes.sum += ev.size
        # The same for every allocation (__addr_to_pcpu_ptr()); the last one is kept.
        t.chunk_shift = (ev.base_addr + ev.off - ev.ptr) & 0xFFFF_FFFF_FFFF_FFFF
        owner = 0
        if self._helper_ranges is not None and call_site:
            owner, unresolved = owner_address(call_site, ev.stack, self._helper_ranges)
            if unresolved is not None:
                t.owner_unresolved[unresolved] += 1
        key = (call_site, owner, ev.cgroup_id, ev.is_atomic, ev.reserved)
        site = t.sites.get(key)
        if site is None:
            if len(t.sites) >= self._site_capacity:
                t.dropped["site_table_full"] += 1
                return
            site = t.sites[key] = SiteValue()
        site.allocations += 1
        site.requested_bytes += size
        old = self._live.get(ev.ptr)
        if old is not None:
            # The pointer is live already: its free was lost (a recursion miss) and the
            # allocator handed it out again, so the old allocation counts as freed.
            self._count_free(old)
        elif len(self._live) >= self._live_capacity:
            t.dropped["live_table_full"] += 1
            return
        self._live[ev.ptr] = LiveEntry(key, size, extension, self._clock(), ev.off & KEPT_MASK)
        t.live_entries = len(self._live)
        site.live_allocations += 1
        site.live_bytes += size
        site.live_extension_bytes += extension

    def _free(self, ptr: int) -> None:
        t = self.tables
        entry = self._live.pop(ptr, None)
        if entry is None:
            t.untracked_frees += 1
            return
        t.live_entries = len(self._live)
        self._count_free(entry)

    def _count_free(self, entry: LiveEntry) -> None:
        site = self.tables.sites[entry.key]
        site.frees += 1
        site.freed_bytes += entry.size
        site.live_allocations -= 1
        site.live_bytes -= entry.size
        site.live_extension_bytes -= entry.extension

    def snapshot(self, ctx: SnapshotContext) -> Snapshot:
        """The Snapshot of everything applied so far."""
        return tables_to_snapshot(self.tables, self._symbolize, ctx)
