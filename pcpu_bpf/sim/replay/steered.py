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
a window of the events that follow.
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
from pcpu_bpf.sim.replay.timeline import ChunkInfo, Timeline
from pcpu_bpf.sim.state import Area, ChunkState, KnownState, build_allocator
from pcpu_bpf.sim.vmalloc import VMALLOC_END, VMALLOC_START

_U64 = (1 << 64) - 1
# How far ahead a free may be pulled forward to make room for an allocation.
REORDER_WINDOW = 4096
KEEP_DETAILS = 20


@dataclass(frozen=True, slots=True)
class Difference:
    """A checked allocation the model put elsewhere."""

    line: int
    recorded_off: int
    model_off: int | None  # None: the model found no room in that chunk


@dataclass
class SteeredResult:
    """What the placement replay found."""

    allocator: Allocator
    checked: int = 0
    differ: int = 0
    unchecked: int = 0  # in chunks that existed before the recording
    unchecked_atomic: int = 0  # atomic, in chunks created during it
    reordered: int = 0
    conflicts: int = 0
    chunks_created: int = 0
    chunks_destroyed: int = 0
    chunks_before: int = 0  # dynamic chunks that existed before the recording
    seeds: int = 0
    seed_bytes: int = 0
    before_bases: set[int] = field(default_factory=set)  # model chunks that existed before
    differences: list[Difference] = field(default_factory=list)
    conflict_lines: list[str] = field(default_factory=list)


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
        # (chunk, off) -> event indexes of its frees, ascending (for pulling forward)
        self.free_at: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, rec in enumerate(self.events):
            k = timeline.chunk_of[i]
            if k is not None and isinstance(rec.event, PercpuFree):
                self.free_at[(k, rec.event.off)].append(i)
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
        # every chunk that existed before, the boot chunks always among them
        boot_chunks = [a.first_chunk, a.reserved_chunk]
        result.before_bases = {c.base_addr for c in [*self.model.values(), *boot_chunks] if c}
        return a, result

    # ---- events ---------------------------------------------------------------------

    def run(self) -> SteeredResult:
        for i in range(len(self.events)):
            if i not in self.consumed:
                self._apply(i)
        return self.result

    def _apply(self, i: int) -> None:
        e = self.events[i].event
        k = self.t.chunk_of[i]
        if k is None:
            return  # a failed allocation changes nothing
        if isinstance(e, PercpuAlloc):
            self._alloc(i, k, e)
        elif isinstance(e, PercpuFree):
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
        gfp = (
            e.gfp_flags if e.gfp_flags is not None else (GFP_ATOMIC if e.is_atomic else GFP_KERNEL)
        )
        gfp = gfp & ~GFP_DIRECT_RECLAIM if e.is_atomic else gfp | GFP_DIRECT_RECLAIM
        if not c.is_free(e.off // 4, size // 4):
            self._pull_frees_forward(i, k, e.off, size)
        if not c.is_free(e.off // 4, size // 4):
            self._conflict(i, f"offset {e.off} is still allocated in the replay")
            return
        if e.is_atomic:
            self._learn_population(c, e.off, size)

        def place(at: int | None) -> None:
            self.a.alloc_in_chunk(
                c, size, e.align, at=at, reserved=e.reserved, gfp=gfp, call_site=e.call_site or 0
            )

        if info.created and e.is_atomic:
            self.result.unchecked_atomic += 1
            place(e.off)
        elif info.created:
            self.result.checked += 1
            found = self.a.search_chunk(c, size, e.align, gfp=gfp)
            if found == e.off:
                place(None)
            else:
                self.result.differ += 1
                if len(self.result.differences) < KEEP_DETAILS:
                    self.result.differences.append(Difference(self.events[i].line, e.off, found))
                place(e.off)
        else:
            self.result.unchecked += 1
            place(e.off)
        self.live[k][e.off] = size

    def _learn_population(self, c: Chunk, off: int, size: int) -> None:
        for p in range(off // PAGE_SIZE, (off + size - 1) // PAGE_SIZE + 1):
            if not c.populated >> p & 1:
                c.chunk_populated(p, p + 1)

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
            self._conflict(i, f"a free at offset {off} of nothing the replay holds")
            return
        self.a.free((c.base_addr + off + self.a.per_cpu_delta) & _U64)

    def _create(self, i: int, k: int) -> None:
        token = self.t.chunks[k].token
        c = None
        if self.real:
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
        c = self.model.pop(k, None)
        if c is None:
            return
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
