"""Replaying a recording's placements: the kernel chose the chunk, the model the offset.

The allocator starts from what the recording shows of the chunks that existed before it
(timeline.py's seeds, in a KnownState). Then every event is applied in order. A chunk
created during the recording is known bit for bit, so an allocation in it is searched
by the model (pcpu_find_block_fit() and pcpu_alloc_area()) and the offset compared with
the kernel's: that is a checked allocation. An allocation in a chunk that existed
before is put where the kernel put it (unchecked). A difference is counted, then the
kernel's placement is applied, so one difference does not cascade. Chunks are created
and destroyed where the recording says, at the recorded base when pointers are real.

An atomic allocation is not checked: it may only take populated pages, and the balance
work populates and depopulates pages without an event, so which pages it could take is
not in the recording. It is put where the kernel put it, and its pages count as
populated from then on. An allocation whose area the model still holds proves that the
frees of what was there happened first (the kernel emits an alloc event after dropping
its lock, and per-CPU clocks can disagree a little): those frees are applied early, from
a window of the events that follow. For the same reason an allocation of another task
traced just after may have been placed first: when the model's first fit is where such
an allocation landed, that one is applied first.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.model.events import (
    GFP_ATOMIC,
    GFP_DIRECT_RECLAIM,
    GFP_KERNEL,
    PercpuAlloc,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.recording import Recording
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.chunk import PAGE_SIZE, Chunk
from pcpu_bpf.sim.geometry import Geometry
from pcpu_bpf.sim.replay.timeline import MAX_ALLOC_SIZE, ChunkInfo, Timeline
from pcpu_bpf.sim.state import Area, ChunkState, KnownState, build_allocator
from pcpu_bpf.sim.vmalloc import VMALLOC_END, VMALLOC_START

_U64 = (1 << 64) - 1
# How far ahead a free may be pulled forward to make room for an allocation.
REORDER_WINDOW = 4096
# How far ahead, in events and seconds, an allocation traced late may be found.
LATE_ALLOC_EVENTS = 256
LATE_ALLOC_SECONDS = 0.01
# An allocation of another task traced this soon after a free may have been placed before it.
CONCURRENT_SECONDS = 50e-6
KEEP_DETAILS = 20


@dataclass(frozen=True, slots=True)
class Difference:
    """A checked allocation the model put elsewhere."""

    line: int
    recorded_off: int
    model_off: int | None  # None: the model found no room in that chunk
    # another task's event in the chunk within CONCURRENT_SECONDS: the order is uncertain
    concurrent: bool = False


@dataclass
class SteeredResult:
    """What the placement replay found."""

    allocator: Allocator
    checked: int = 0
    differ: int = 0
    differ_concurrent: int = 0  # of which: with another task's event close in time
    unchecked: int = 0  # in chunks that existed before the recording
    unchecked_atomic: int = 0  # atomic, in chunks created during it
    reordered: int = 0
    # real pointers only: allocations whose pointer is not the kernel's (base or delta)
    pointers_differ: int = 0
    # real pointers only: new chunks, and those not where pcpu_get_vm_areas() in the model
    # would have put them (lazily freed areas of other vmalloc users are not known)
    bases_checked: int = 0
    bases_differ: int = 0
    conflicts: int = 0
    # allocations the kernel must have freed without a traced event (their place was taken)
    implied_frees: int = 0
    chunks_created: int = 0
    chunks_destroyed: int = 0
    chunks_before: int = 0  # dynamic chunks that existed before the recording
    # the most dynamic chunks the events show alive at once (those that existed before
    # count from the start; one no event names is not seen)
    peak_chunks_seen: int = 0
    # the most chunks created and not yet destroyed at once, counted from the start
    peak_created: int = 0
    seeds: int = 0
    seed_bytes: int = 0
    before_bases: set[int] = field(default_factory=set)  # model chunks that existed before
    differences: list[Difference] = field(default_factory=list)
    conflict_lines: list[str] = field(default_factory=list)
    implied_lines: list[str] = field(default_factory=list)


class _Steered:
    def __init__(self, recording: Recording, timeline: Timeline, geometry: Geometry) -> None:
        self.recording = recording
        self.events = recording.events
        self.t = timeline
        self.g = geometry
        self.real = not recording.hashed_pointers
        self.model: dict[int, Chunk] = {}
        self.live: dict[int, dict[int, int]] = defaultdict(dict)  # chunk -> off -> size
        self.consumed: set[int] = set()
        # (chunk, off) -> allocations freed by _free_what_was_there whose free may follow
        self.untraced: dict[tuple[int, int], int] = {}
        # (chunk, off) -> event indexes of its frees, ascending (for pulling forward)
        self.free_at: dict[tuple[int, int], list[int]] = defaultdict(list)
        # chunk -> event indexes of its allocations, ascending (for placing them earlier)
        self.allocs_in: dict[int, list[int]] = defaultdict(list)
        self.events_in: dict[int, list[int]] = defaultdict(list)  # chunk -> its events
        for i, rec in enumerate(self.events):
            k = timeline.chunk_of[i]
            if k is not None:
                self.events_in[k].append(i)
            if k is not None and isinstance(rec.event, PercpuFree):
                self.free_at[(k, rec.event.off)].append(i)
            elif k is not None and isinstance(rec.event, PercpuAlloc):
                self.allocs_in[k].append(i)
        self.a, self.result = self._start()

    # ---- the state before the first event -------------------------------------------

    def _boot_roles(self) -> dict[int, str]:
        """Which chunks that existed before are the boot chunks ("first", "reserved")."""
        roles: dict[int, str] = {}
        for c in self.t.chunks:
            if c.created:
                continue
            if c.reserved and self.g.reserved_size and "reserved" not in roles.values():
                roles[c.index] = "reserved"
            elif (
                self.real
                and not VMALLOC_START <= c.token <= VMALLOC_END
                and "first" not in roles.values()
            ):
                roles[c.index] = "first"
        return roles

    def _start(self) -> tuple[Allocator, SteeredResult]:
        roles = self._boot_roles()
        delta = next(
            (
                (e.event.ptr - e.event.base_addr - e.event.off) & _U64
                for e in self.events
                if isinstance(e.event, PercpuAlloc)
            ),
            None,
        )
        first = next((c for c in self.t.chunks if roles.get(c.index) == "first"), None)
        base = None
        if self.real and first is not None:
            static_aligned = (self.g.static_size + 3) & ~3
            base = first.token - ((static_aligned + self.g.reserved_size) & ~(PAGE_SIZE - 1))
        before = [c for c in self.t.chunks if not c.created and c.index not in roles]
        for c in self.t.chunks:
            if role := roles.get(c.index):
                self._fit_boot_seeds(c, role)
        boot = {role: _areas(c) for c in self.t.chunks if (role := roles.get(c.index))}
        seeds = sum(len(c.seeds) for c in self.t.chunks)
        seed_bytes = sum(sum(c.seeds.values()) for c in self.t.chunks)

        def state(real_bases: bool) -> KnownState:
            return KnownState(
                first_chunk=boot.get("first", ()),
                reserved_chunk=boot.get("reserved", ()),
                chunks=tuple(
                    ChunkState(_areas(c), base_addr=c.token if real_bases else None) for c in before
                ),
            )

        delta = delta if self.real else None
        try:
            a = build_allocator(state(self.real), self.g, per_cpu_delta=delta, pcpu_base_addr=base)
        except ScenarioError:
            # the recorded bases or boot offsets do not fit this geometry: let the model
            # place the chunks, and put the boot chunks' seeds aside
            boot = {}
            a = build_allocator(state(False), self.g, per_cpu_delta=delta)
        for c in self.t.chunks:
            role = roles.get(c.index)
            if role == "first" and boot:
                self.model[c.index] = a.first_chunk
            elif role == "reserved" and boot and a.reserved_chunk is not None:
                self.model[c.index] = a.reserved_chunk
        for c, chunk in zip(before, a.dynamic_chunks(), strict=True):
            self.model[c.index] = chunk
        for c in self.t.chunks:
            if c.index in self.model:
                self.live[c.index].update(c.seeds)
        result = SteeredResult(a, chunks_before=len(before), seeds=seeds, seed_bytes=seed_bytes)
        result.peak_chunks_seen, result.peak_created = self._peaks(roles)
        # every chunk that existed before, the boot chunks always among them
        boot_chunks = [a.first_chunk, a.reserved_chunk]
        result.before_bases = {c.base_addr for c in [*self.model.values(), *boot_chunks] if c}
        return a, result

    def _fit_boot_seeds(self, c: ChunkInfo, role: str) -> None:
        """A boot chunk serves only its dynamic (or reserved) area: seeds end there, and a
        seed outside it means the geometry is not the recording's."""
        static_aligned = (self.g.static_size + 3) & ~3
        if role == "first":
            start = (static_aligned + self.g.reserved_size) % PAGE_SIZE
            end = start + self.g.dyn_size - (static_aligned - self.g.static_size)
        else:
            start = static_aligned % PAGE_SIZE
            end = start + self.g.reserved_size
        for off, size in list(c.seeds.items()):
            if start <= off < end:
                c.seeds[off] = min(size, end - off)
            else:
                del c.seeds[off]

    def _peaks(self, roles: dict[int, str]) -> tuple[int, int]:
        """(dynamic chunks seen alive at once, chunks created and not destroyed at once)."""
        alive = sum(1 for c in self.t.chunks if not c.created and c.index not in roles)
        running = most_running = 0
        most_seen = alive
        for i, rec in enumerate(self.events):
            k = self.t.chunk_of[i]
            if k is None or k in roles:
                continue
            if isinstance(rec.event, PercpuCreateChunk):
                alive += 1
                running += 1
            elif isinstance(rec.event, PercpuDestroyChunk):
                alive -= 1
                running -= 1
            most_seen = max(most_seen, alive)
            most_running = max(most_running, running)
        return most_seen, most_running

    # ---- events ---------------------------------------------------------------------

    def run(self) -> SteeredResult:
        for i in range(len(self.events)):
            if i not in self.consumed:
                self._apply(i)
                if self.a.balance_pending:
                    # the work the kernel would run soon after, minus the chunks it makes
                    # and unmakes: the recording says when those happened
                    self.a.run_balance(chunks=False)
        return self.result

    def _apply(self, i: int) -> None:
        e = self.events[i].event
        k = self.t.chunk_of[i]
        if k is None:
            return  # a failed allocation changes nothing
        if isinstance(e, PercpuAlloc):
            self._alloc(i, k, e)
        elif isinstance(e, PercpuFree):
            self._allocs_placed_before(i, k, e.off)
            self._free(i, k, e.off)
        elif isinstance(e, PercpuCreateChunk):
            self._create(i, k)
        elif isinstance(e, PercpuDestroyChunk):
            self._destroy(i, k)

    def _conflict(self, i: int, what: str) -> None:
        self.result.conflicts += 1
        if len(self.result.conflict_lines) < KEEP_DETAILS:
            self.result.conflict_lines.append(f"line {self.events[i].line}: {what}")

    def _chunk(self, i: int, k: int) -> Chunk | None:
        c = self.model.get(k)
        if c is None:  # a boot chunk this geometry has no room for
            self._conflict(i, "an event in a boot chunk the geometry does not match")
        return c

    def _alloc(self, i: int, k: int, e: PercpuAlloc) -> None:
        c = self._chunk(i, k)
        if c is None:
            return
        info: ChunkInfo = self.t.chunks[k]
        size = (e.size + 3) & ~3
        align = max(e.align, 4)
        if not 0 < size <= MAX_ALLOC_SIZE or align > PAGE_SIZE or align & (align - 1):
            self._conflict(
                i, f"size {e.size}, align {e.align}: the kernel makes no such allocation"
            )
            return
        if e.off % 4 or e.off + size > c.nr_pages * PAGE_SIZE:
            self._conflict(i, f"offset {e.off} is not a place for {size} bytes in a chunk")
            return
        gfp = self._gfp(e)
        if not c.is_free(e.off // 4, size // 4):
            self._pull_frees_forward(i, k, e.off, size)
        if not c.is_free(e.off // 4, size // 4):
            self._free_what_was_there(i, k, c, e.off, size)
        if not c.is_free(e.off // 4, size // 4):
            self._conflict(i, f"offset {e.off} is still allocated in the replay")
            return
        if e.is_atomic:
            self._learn_population(c, e.off, size)

        def place(at: int | None) -> bool:
            ptr = self.a.alloc_in_chunk(
                c, size, align, at=at, reserved=e.reserved, gfp=gfp, call_site=e.call_site or 0
            )
            if ptr is None:  # what was applied early took the place: the trace disagrees
                self._conflict(i, f"offset {e.off} was taken by an event applied early")
                return False
            if self.real and ptr != e.ptr:
                self.result.pointers_differ += 1
            return True

        if info.created and e.is_atomic:
            self.result.unchecked_atomic += 1
            placed = place(e.off)
        elif info.created:
            self.result.checked += 1
            found = self.a.search_chunk(c, size, align, gfp=gfp)
            while found is not None and found != e.off and self._place_earlier(i, k, found, size):
                found = self.a.search_chunk(c, size, align, gfp=gfp)
            if found == e.off:
                placed = place(None)
            else:
                self.result.differ += 1
                concurrent = self._concurrent(i, k)
                self.result.differ_concurrent += concurrent
                if len(self.result.differences) < KEEP_DETAILS:
                    self.result.differences.append(
                        Difference(self.events[i].line, e.off, found, concurrent)
                    )
                placed = place(e.off)
        else:
            self.result.unchecked += 1
            placed = place(e.off)
        if placed:
            self.live[k][e.off] = size

    def _free_what_was_there(self, i: int, k: int, c: Chunk, off: int, size: int) -> None:
        """The kernel put this allocation where the model still holds others whose free
        is nowhere near in the trace: they were freed, untraced. Free them now."""
        for start, held in sorted(self.live[k].items()):
            if start < off + size and off < start + held:
                del self.live[k][start]
                self.a.free((c.base_addr + start + self.a.per_cpu_delta) & _U64)
                self.result.implied_frees += 1
                if len(self.result.implied_lines) < KEEP_DETAILS:
                    self.result.implied_lines.append(
                        f"line {self.events[i].line}: offset {start} freed, untraced, "
                        f"before an allocation at {off}"
                    )
                # its free, if traced later after all, finds nothing: not a conflict
                self.untraced[(k, start)] = self.untraced.get((k, start), 0) + 1

    def _concurrent(self, i: int, k: int) -> bool:
        """Another task's event in the same chunk within CONCURRENT_SECONDS of event
        ``i``: which came first in the kernel the trace cannot tell."""
        me = self.events[i]
        if me.timestamp is None:
            return False
        around = self.events_in[k]
        n = bisect.bisect_left(around, i)
        for step in (-1, 1):
            j = n + step
            while 0 <= j < len(around):
                other = self.events[around[j]]
                if (
                    other.timestamp is None
                    or abs(other.timestamp - me.timestamp) > CONCURRENT_SECONDS
                ):
                    break
                if me.pid is None or other.pid != me.pid:
                    return True
                j += step
        return False

    def _learn_population(self, c: Chunk, off: int, size: int) -> None:
        for p in range(off // PAGE_SIZE, (off + size - 1) // PAGE_SIZE + 1):
            if not c.populated >> p & 1:
                c.chunk_populated(p, p + 1)

    def _place_earlier(self, i: int, k: int, off: int, size: int) -> bool:
        """Apply now a later allocation the kernel put in [off, off + size): the model's
        first fit for event ``i``, which the kernel did not take because that one was
        there first (its event came later, after the kernel had dropped its lock). Only
        another task's: one task's allocations are traced in the order they were made."""
        later = self.allocs_in[k]
        me = self.events[i]
        mine = me.event
        assert isinstance(mine, PercpuAlloc)
        # By index, not a slice: the look stops within LATE_ALLOC_EVENTS, and copying the
        # rest of a long chunk's list at every event made replays quadratic.
        for at in range(bisect.bisect_right(later, i), len(later)):
            j = later[at]
            rec = self.events[j]
            if j - i > LATE_ALLOC_EVENTS or (
                me.timestamp is not None
                and rec.timestamp is not None
                and rec.timestamp - me.timestamp > LATE_ALLOC_SECONDS
            ):
                break
            e = rec.event
            assert isinstance(e, PercpuAlloc)
            if j in self.consumed or (me.pid is not None and rec.pid == me.pid):
                continue
            if e.off < mine.off + mine.size and mine.off < e.off + e.size:
                continue  # it lived beside this one: it came after
            if e.off < off + size and off < e.off + e.size:
                self.consumed.add(j)
                self.result.reordered += 1
                self._apply(j)
                return True
        return False

    def _allocs_placed_before(self, f: int, k: int, off: int) -> None:
        """Before the free ``f``, apply the allocations of other tasks traced within
        CONCURRENT_SECONDS after it that the model puts where the kernel did without
        that free and elsewhere with it: the kernel traces an allocation after dropping
        its lock, so one placed before the free can be traced after it. Only across
        frees of the same task: any other event in between ends the look."""
        me = self.events[f]
        c = self.model.get(k)
        freed = self.live[k].get(off)
        if me.timestamp is None or c is None or freed is None or not self.t.chunks[k].created:
            return
        frees = [off]  # this free and the same task's that follow it, not applied yet
        around = self.events_in[k]
        for at in range(bisect.bisect_right(around, f), len(around)):
            j = around[at]
            rec = self.events[j]
            if (
                j - f > LATE_ALLOC_EVENTS
                or rec.timestamp is None
                or rec.timestamp - me.timestamp > CONCURRENT_SECONDS
                or j in self.consumed
            ):
                return
            e = rec.event
            if isinstance(e, PercpuFree) and rec.pid == me.pid and e.off in self.live[k]:
                frees.append(e.off)
                continue
            if not isinstance(e, PercpuAlloc) or e.is_atomic or rec.pid == me.pid:
                return
            if not self._placed_before(c, k, e, frees):
                return
            self.consumed.add(j)
            self.result.reordered += 1
            self._alloc(j, k, e)

    def _placed_before(self, c: Chunk, k: int, e: PercpuAlloc, frees: list[int]) -> bool:
        """The model finds the kernel's offset for ``e`` before ``frees`` and not after."""
        size, align = (e.size + 3) & ~3, max(e.align, 4)
        if not 0 < size <= MAX_ALLOC_SIZE or align > PAGE_SIZE or align & (align - 1):
            return False
        if not c.is_free(e.off // 4, size // 4):
            return False
        live = self.live[k]
        if any(e.off < o + live[o] and o < e.off + size for o in frees):
            return False  # it took what one of these frees gave back: it came after
        gfp = self._gfp(e)
        if self.a.search_chunk(c, size, align, gfp=gfp) != e.off:
            return False
        after = c.clone()
        for o in frees:
            after.free_area(o)
        return self.a.search_chunk(after, size, align, gfp=gfp) != e.off

    @staticmethod
    def _gfp(e: PercpuAlloc) -> int:
        gfp = (
            e.gfp_flags if e.gfp_flags is not None else (GFP_ATOMIC if e.is_atomic else GFP_KERNEL)
        )
        return gfp & ~GFP_DIRECT_RECLAIM if e.is_atomic else gfp | GFP_DIRECT_RECLAIM

    def _pull_frees_forward(self, i: int, k: int, off: int, size: int) -> None:
        live = self.live[k]
        for start, held in sorted(live.items()):
            if start >= off + size or start + held <= off:
                continue
            later = self.free_at.get((k, start), [])
            j = bisect.bisect_right(later, i)
            if j < len(later) and later[j] - i <= REORDER_WINDOW and later[j] not in self.consumed:
                self.consumed.add(later[j])
                self.result.reordered += 1
                self._free(later[j], k, start)

    def _free(self, i: int, k: int, off: int) -> None:
        c = self._chunk(i, k)
        if c is None:
            return
        if self.live[k].pop(off, None) is None:
            if self.untraced.get((k, off)):
                self.untraced[(k, off)] -= 1  # freed already, when its place was taken
                return
            self._conflict(i, f"a free at offset {off} of nothing the replay holds")
            return
        self.a.free((c.base_addr + off + self.a.per_cpu_delta) & _U64)

    def _create(self, i: int, k: int) -> None:
        token = self.t.chunks[k].token
        c = None
        if self.real:
            self.result.bases_checked += 1
            if self.a.vm.peek(self.a.area_size, self.g.atom_size) != token:
                self.result.bases_differ += 1
            try:
                c = self.a.create_chunk(token)
            except ValueError:
                c = None  # the model still holds that area: let it choose
        if c is None:
            c = self.a.create_chunk()
        if c is None:
            self._conflict(i, "the model has no vm area left for a new chunk")
            return
        self.a.relocate(c, -1)
        self.model[k] = c
        self.result.chunks_created += 1

    def _destroy(self, i: int, k: int) -> None:
        c = self.model.get(k)
        if c is None:
            return
        if c is self.a.first_chunk or c is self.a.reserved_chunk:
            self._conflict(i, "a destroy of a boot chunk, which the kernel never destroys")
            return
        del self.model[k]
        held = self.live.pop(k, {})
        if held:
            self._conflict(
                i, f"the kernel destroyed a chunk the replay holds {len(held)} allocations in"
            )
            for off in held:
                self.a.free((c.base_addr + off + self.a.per_cpu_delta) & _U64)
        self.a.release_chunk(c)
        self.result.chunks_destroyed += 1


def _areas(c: ChunkInfo) -> tuple[Area, ...]:
    return tuple(sorted(c.seeds.items()))


def replay_placements(
    recording: Recording, timeline: Timeline, geometry: Geometry
) -> SteeredResult:
    """Apply every event of ``recording`` to a model of ``geometry``, checking offsets."""
    return _Steered(recording, timeline, geometry).run()
