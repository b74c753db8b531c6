"""The kernel's own accounting, as data: debugfs percpu_stats and the meminfo Percpu line.

mm/percpu-stats.c prints percpu_stats; pcpu_bpf.kernel.percpu_stats parses and renders
that text, the simulator produces it, and the Snapshot carries it as these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class KernelStats:
    """debugfs percpu_stats and the meminfo Percpu line, as read on one occasion.

    Either part may be missing (no debugfs, no CONFIG_PERCPU_STATS); ``errors`` names
    the parts that could not be read on this occasion, with the reason.
    """

    percpu_stats: PercpuStats | None = None
    meminfo_percpu_bytes: int | None = None
    errors: Mapping[str, str] = field(default_factory=_frozen)
    # When they were read, on the clock of Snapshot.timestamp: a daemon reads the kernel at
    # most once per interval, and scrapes in between are told how old the figures are.
    read_at: float | None = None
