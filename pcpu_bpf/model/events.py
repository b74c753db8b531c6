"""The five percpu tracepoint events, with the kernel's field names and raw values.

Mirrors include/trace/events/percpu.h (6.18 formats). ``call_site`` is the u64 return
address the kernel records, not a name: symbolizing happens later (see symbolizer.py).
Kernels before 5.19 lack ``call_site``, ``bytes_alloc`` and ``gfp_flags``; events from
such kernels carry ``None`` there.
"""

from __future__ import annotations

from dataclasses import dataclass

# Raw gfp bits of 6.18 (include/linux/gfp_types.h), as the tracepoints record them.
GFP_DIRECT_RECLAIM = 0x400
GFP_NOWARN = 0x2000
GFP_ACCOUNT = 0x400000
GFP_KERNEL = 0xCC0
GFP_KERNEL_ACCOUNT = 0x400CC0
GFP_USER = 0x100CC0
GFP_ATOMIC = 0x820
GFP_NOWAIT = 0x2800
# What bpf_map_alloc_percpu passes: GFP_USER | __GFP_NOWARN | __GFP_ACCOUNT.
GFP_BPF_MAP = GFP_USER | GFP_NOWARN | GFP_ACCOUNT


ROOT_CGROUP_ID = 1  # the root cgroup's kernfs id
CONTEXT_FIELDS = ("stack", "cgroup_id")  # PercpuAlloc's fields that no tracepoint has


@dataclass(frozen=True, slots=True)
class PercpuAlloc:
    """percpu:percpu_alloc_percpu: one successful allocation."""

    call_site: int | None
    reserved: bool
    is_atomic: bool
    size: int
    align: int
    base_addr: int
    off: int
    ptr: int
    bytes_alloc: int | None
    gfp_flags: int | None
    # Not tracepoint fields: what the programs read beside them. The kernel stack as
    # bpf_get_stack gives it (innermost first, the program's frame dropped; empty: none
    # taken) and the allocating task's cgroup v2 id.
    stack: tuple[int, ...] = ()
    cgroup_id: int = ROOT_CGROUP_ID


@dataclass(frozen=True, slots=True)
class PercpuFree:
    """percpu:percpu_free_percpu: one free of a live allocation."""

    base_addr: int
    off: int
    ptr: int


@dataclass(frozen=True, slots=True)
class PercpuAllocFail:
    """percpu:percpu_alloc_percpu_fail: an allocation that reached the kernel's fail path."""

    reserved: bool
    is_atomic: bool
    size: int
    align: int


@dataclass(frozen=True, slots=True)
class PercpuCreateChunk:
    """percpu:percpu_create_chunk: a new chunk exists."""

    base_addr: int


@dataclass(frozen=True, slots=True)
class PercpuDestroyChunk:
    """percpu:percpu_destroy_chunk: a chunk was depopulated and released."""

    base_addr: int


Event = PercpuAlloc | PercpuFree | PercpuAllocFail | PercpuCreateChunk | PercpuDestroyChunk

# Tracepoint name -> event class, in the order the kernel's header defines them.
TRACEPOINTS: dict[str, type[Event]] = {
    "percpu_alloc_percpu": PercpuAlloc,
    "percpu_free_percpu": PercpuFree,
    "percpu_alloc_percpu_fail": PercpuAllocFail,
    "percpu_create_chunk": PercpuCreateChunk,
    "percpu_destroy_chunk": PercpuDestroyChunk,
}

# Every (tracepoint, field) of the 6.18 formats, in the kernel's order.
ALL_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (event, name)
    for event, cls in TRACEPOINTS.items()
    for name in cls.__dataclass_fields__
    if name not in CONTEXT_FIELDS
)
