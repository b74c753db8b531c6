"""The kernel's own accounting, as data: debugfs percpu_stats, the meminfo Percpu line, the
percpu memory of every BPF map on the host, and the cgroups' figures.

mm/percpu-stats.c prints percpu_stats; pcpu_bpf.kernel.percpu_stats parses and renders
that text, the simulator produces it, and the Snapshot carries it as these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Chunk kinds, by the header line the kernel prints for them.
CHUNK_RESERVED = "reserved"  # "Chunk: <- Reserved Chunk"
CHUNK_FIRST = "first"  # "Chunk: <- First Chunk"
CHUNK_TO_DEPOPULATE = "to_depopulate"  # "Chunk (to_depopulate)"
CHUNK_SIDELINED = "sidelined"  # "Chunk (sidelined):"
CHUNK_NORMAL = "normal"  # "Chunk:"


@dataclass(frozen=True, slots=True)
class AllocationInfo:
    """The "Allocation Info" block: the boot-time geometry (pcpu_alloc_info)."""

    unit_size: int
    static_size: int
    reserved_size: int
    dyn_size: int
    atom_size: int
    alloc_size: int


@dataclass(frozen=True, slots=True)
class GlobalStats:
    """The "Global Stats" block."""

    nr_alloc: int
    nr_dealloc: int
    nr_cur_alloc: int
    nr_max_alloc: int
    nr_chunks: int
    nr_max_chunks: int
    min_alloc_size: int
    max_alloc_size: int
    empty_pop_pages: int  # signed in the kernel


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """One chunk's block under "Per Chunk Stats", in print order."""

    kind: str  # one of the CHUNK_* constants
    nr_alloc: int
    max_alloc_size: int
    empty_pop_pages: int
    first_bit: int
    free_bytes: int
    contig_bytes: int
    sum_frag: int
    max_frag: int
    cur_min_alloc: int
    cur_med_alloc: int
    cur_max_alloc: int


@dataclass(frozen=True, slots=True)
class ChunkTotals:
    """Per-chunk figures summed (or maximized) over every chunk, the reserved one included."""

    free_bytes: int = 0  # sum of free_bytes
    fragmented_bytes: int = 0  # sum of sum_frag: free bytes stranded between allocations
    max_fragment_bytes: int = 0  # largest max_frag
    max_contig_bytes: int = 0  # largest contig_bytes (the kernel's possibly stale hint)

    @classmethod
    def of(cls, chunks: tuple[ChunkStats, ...]) -> ChunkTotals:
        """The totals of ``chunks``."""
        return cls(
            free_bytes=sum(c.free_bytes for c in chunks),
            fragmented_bytes=sum(c.sum_frag for c in chunks),
            max_fragment_bytes=max((c.max_frag for c in chunks), default=0),
            max_contig_bytes=max((c.contig_bytes for c in chunks), default=0),
        )


@dataclass(frozen=True, slots=True)
class PercpuStats:
    """The whole percpu_stats file; ``chunks`` is empty where only the totals are known
    (read back from a daemon's /metrics)."""

    info: AllocationInfo
    globals: GlobalStats
    totals: ChunkTotals
    chunks: tuple[ChunkStats, ...] = ()

    @classmethod
    def of(
        cls, info: AllocationInfo, globals: GlobalStats, chunks: tuple[ChunkStats, ...]
    ) -> PercpuStats:
        """The stats of a full file: the totals come from the chunks."""
        return cls(info, globals, ChunkTotals.of(chunks), chunks)


def _frozen(mapping: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True, order=True)
class BpfMapOwner:
    """Who holds a BPF map's percpu memory: the map's name and type, and the names of the
    programs that use it ("" for a map no program uses; `OTHER` for the rest)."""

    map: str
    map_type: str
    program: str


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """What the cgroup filesystem says about percpu memory, as read on one occasion.

    ``dying``: cgroups removed but not yet freed, by hierarchy: "unified" (cgroup v2's
    cgroup.stat nr_dying_descendants of its root) and, on a host that mounts the v1
    memory controller, "memory" (/proc/cgroups num_cgroups minus the directories).
    ``memory_percpu_bytes``: per cgroup v2 path, the percpu bytes memory.stat charges to
    the cgroup itself (its ``percpu`` line minus its children's), the largest N and the
    rest as `OTHER`; None where the v2 memory controller is not enabled.
    """

    dying: Mapping[str, int] = field(default_factory=_frozen)
    memory_percpu_bytes: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class KernelStats:
    """debugfs percpu_stats, the meminfo Percpu line, the BPF maps and the cgroups, as
    read on one occasion.

    Any part may be missing (no debugfs, no CONFIG_PERCPU_STATS, no CAP_SYS_ADMIN to list
    BPF maps); ``errors`` names the parts that could not be read on this occasion, with
    the reason.
    """

    percpu_stats: PercpuStats | None = None
    meminfo_percpu_bytes: int | None = None
    errors: Mapping[str, str] = field(default_factory=_frozen)
    # When they were read, on the clock of Snapshot.timestamp: a daemon reads the kernel at
    # most once per interval, and scrapes in between are told how old the figures are.
    read_at: float | None = None
    # Every BPF map's percpu bytes (all possible CPUs) by owner: the largest N, the rest
    # under OTHER.
    bpf_maps: Mapping[BpfMapOwner, int] | None = None
    cgroups: CgroupStats | None = None
