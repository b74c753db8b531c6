"""Replaying a recording's workload: the same requests and frees, the model decides all.

This is the what-if replay. The allocator boots with the geometry asked for; what was
live before the recording is allocated first (the seeds, and, from a recording's
percpu_stats header, the rest of the live bytes in allocations of the average size);
then every recorded allocation is requested again (size, alignment, GFP flags, reserved)
and every recorded free frees what its allocation got. Chunks are created, populated and
destroyed by the model, with the balance work run right after the operation that asked
for it. The recorded chunk events and failures are only counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcpu_bpf.model.events import (
    GFP_ATOMIC,
    GFP_DIRECT_RECLAIM,
    GFP_KERNEL,
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.kernel_stats import CHUNK_FIRST, CHUNK_RESERVED, PercpuStats
from pcpu_bpf.recording import Recording
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.geometry import Geometry
from pcpu_bpf.sim.replay.timeline import MAX_ALLOC_SIZE, Timeline


@dataclass
class WorkloadResult:
    """What the model did with the workload on one geometry."""

    geometry: Geometry
    allocator: Allocator
    chunks_at_start: int = 0  # dynamic chunks after the live set was allocated
    chunks_created: int = 0
    chunks_destroyed: int = 0
    peak_chunks: int = 0  # dynamic chunks at once, at most
    percpu_bytes_peak: int = 0  # meminfo Percpu
    percpu_bytes_end: int = 0
    peak_live_bytes: int = 0  # requested bytes live at once, at most
    allocations: int = 0
    failed: int = 0  # recorded allocations the model could not make
    start_allocations: int = 0  # the live set allocated first
    start_bytes: int = 0


class _Counter:
    def __init__(self) -> None:
        self.created = self.destroyed = self.failed = 0

    def __call__(self, e: Event) -> None:
        if isinstance(e, PercpuCreateChunk):
            self.created += 1
        elif isinstance(e, PercpuDestroyChunk):
            self.destroyed += 1
        elif isinstance(e, PercpuAllocFail):
            self.failed += 1


def start_set(
    recording: Recording, timeline: Timeline, header_stats: PercpuStats | None
) -> list[tuple[int, int, bool]]:
    """(size, align, reserved) of what was live before the recording, seeds first."""
    out: list[tuple[int, int, bool]] = []
    for c in timeline.chunks:
        for off, size in sorted(c.seeds.items()):
            out.append((size, 8 if off % 8 == 0 else 4, c.reserved))
    if header_stats is None:
        return out
    info = header_stats.info
    used = 0
    for cs in header_stats.chunks:
        if cs.kind == CHUNK_FIRST:
            size = info.dyn_size
        elif cs.kind == CHUNK_RESERVED:
            size = info.reserved_size
        else:
            size = info.unit_size
        used += max(size - cs.free_bytes, 0)
    rest_bytes = used - sum(size for size, _, _ in out)
    rest_count = header_stats.globals.nr_cur_alloc - len(out)
    if rest_bytes <= 0:
        return out
    if rest_count <= 0:
        rest_count = -(-rest_bytes // MAX_ALLOC_SIZE)
    piece = min(max((rest_bytes // rest_count + 3) & ~3, 4), MAX_ALLOC_SIZE)
    out.extend((piece, 8, False) for _ in range(min(rest_count, -(-rest_bytes // piece))))
    return out


def replay_workload(
    recording: Recording,
    timeline: Timeline,
    geometry: Geometry,
    *,
    header_stats: PercpuStats | None = None,
) -> WorkloadResult:
    """Run the recorded requests and frees on a fresh model of ``geometry``."""
    count = _Counter()
    a = Allocator(geometry, balance="eager", sink=count)
    r = WorkloadResult(geometry, a)
    seeds: dict[tuple[int, int], int] = {}
    sizes: dict[int, int] = {}  # pointer -> requested size, the live set at the start too
    keys = [(c.index, off) for c in timeline.chunks for off in sorted(c.seeds)]
    for n, (size, align, reserved) in enumerate(start_set(recording, timeline, header_stats)):
        ptr = a.alloc(size, align, reserved=reserved)
        if ptr is not None:
            r.start_allocations += 1
            r.start_bytes += size
            sizes[ptr] = size
            if n < len(keys):
                seeds[keys[n]] = ptr
    r.chunks_at_start = r.peak_chunks = a.nr_chunks - 1
    r.peak_live_bytes = r.start_bytes
    count.created = count.destroyed = count.failed = 0
    r.percpu_bytes_peak = a.meminfo_percpu_kb() * 1024
    live: dict[int, int] = {}  # alloc event index -> pointer
    live_bytes = r.start_bytes
    for i, rec in enumerate(recording.events):
        e = rec.event
        if isinstance(e, PercpuAlloc):
            r.allocations += 1
            gfp = e.gfp_flags if e.gfp_flags is not None else GFP_KERNEL
            if e.is_atomic:
                gfp = (gfp & ~GFP_DIRECT_RECLAIM) if e.gfp_flags is not None else GFP_ATOMIC
            ptr = a.alloc(e.size, e.align, reserved=e.reserved, gfp=gfp, call_site=e.call_site or 0)
            if ptr is None:
                r.failed += 1
            else:
                live[i] = ptr
                sizes[ptr] = e.size
                live_bytes += e.size
        elif isinstance(e, PercpuFree):
            start, k = timeline.frees.get(i), timeline.chunk_of[i]
            if start is not None:
                ptr = live.pop(start, None)
            else:
                ptr = seeds.pop((k, e.off), None) if k is not None else None
            if ptr is not None:
                a.free(ptr)
                live_bytes -= sizes.pop(ptr)
        else:
            continue
        r.peak_live_bytes = max(r.peak_live_bytes, live_bytes)
        r.peak_chunks = max(r.peak_chunks, a.nr_chunks - 1)  # the first chunk is not dynamic
        r.percpu_bytes_peak = max(r.percpu_bytes_peak, a.meminfo_percpu_kb() * 1024)
    r.chunks_created, r.chunks_destroyed = count.created, count.destroyed
    r.percpu_bytes_end = a.meminfo_percpu_kb() * 1024
    return r
