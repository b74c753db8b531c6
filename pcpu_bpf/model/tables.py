"""The tracking tables, shaped exactly like the BPF maps, and their reading into a Snapshot.

The BPF programs aggregate into maps keyed by the raw call-site *address*; the reference
aggregator keeps the same tables in Python. Both backends turn their tables into a
Snapshot through `tables_to_snapshot`, which is where addresses become function names
(several addresses inside one function fold into one label).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pcpu_bpf.model.breakdown import Breakdown, BreakdownInputs, breakdown
from pcpu_bpf.model.chunk_map import ChunkMap
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.layout import (
    DROP_REASONS,
    NR_FAILURE_CLASSES,
    NR_SIZE_SLOTS,
    OWNER_UNRESOLVED_REASONS,
    failure_index,
)
from pcpu_bpf.model.ranking import DEFAULT_MAX_CGROUPS, OTHER, top_n
from pcpu_bpf.model.snapshot import (
    UNKNOWN_SITE,
    LiveAges,
    MapUsage,
    ProgramStats,
    SiteKey,
    SiteRecord,
    SizeHistogram,
    Snapshot,
)

# The key of the site table: (call_site address, owner address, cgroup v2 id, atomic,
# reserved); call site 0 = the kernel has no call_site field, owner 0 = none (the call
# site is no helper, or owners are off, or the stack did not tell).
SiteAddressKey = tuple[int, int, int, bool, bool]
# Labels cgroup ids: id -> path (" (deleted)" for a removed one), for the ids asked.
CgroupLabels = Callable[[Iterable[int]], Mapping[int, str]]


@dataclass(slots=True)
class SiteValue:
    """Counters under one site key; bpf/maps.py derives them from struct site_record
    (bpf_programs/pcpu.h), whose live counts are allocations - dropped - frees.

    Bytes here are one unit's: sizes as the live entries keep them (KEPT_MASK). The
    Snapshot multiplies them by the number of units."""

    allocations: int = 0
    requested_bytes: int = 0
    frees: int = 0
    freed_bytes: int = 0
    live_allocations: int = 0
    live_bytes: int = 0
    live_extension_bytes: int = 0  # memcg extension of the live tracked allocations


@dataclass(slots=True)
class LiveEntry:
    """What the live table remembers of one allocation, keyed by its percpu pointer."""

    key: SiteAddressKey
    size: int  # one unit's copy, as kept (KEPT_MASK)
    extension: int  # bytes_alloc - size x possible CPUs, as kept
    alloc_time: float  # on the backend's clock
    off: int = 0  # the allocation's offset in its chunk, as kept (KEPT_MASK)


@dataclass(slots=True)
class Histogram:
    """Mutable log2 size histogram (buckets as in snapshot.SIZE_BUCKETS, plus the sum)."""

    counts: list[int] = field(default_factory=lambda: [0] * NR_SIZE_SLOTS)
    sum: int = 0

    def frozen(self) -> SizeHistogram:
        return SizeHistogram(tuple(self.counts), self.sum)


@dataclass(slots=True)
class Tables:
    """Everything the BPF maps hold, after summing per-CPU values."""

    sites: dict[SiteAddressKey, SiteValue] = field(default_factory=dict)
    untracked_frees: int = 0
    sizes: Histogram = field(default_factory=Histogram)
    failures: list[int] = field(default_factory=lambda: [0] * NR_FAILURE_CLASSES)
    failed_sizes: Histogram = field(default_factory=Histogram)
    chunk_creations: int = 0
    chunk_destructions: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    owner_unresolved: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(OWNER_UNRESOLVED_REASONS, 0)
    )
    live_entries: int = 0
    # base_addr of each chunk created since tracing began and not destroyed, in the chunk
    # table's slot order; and base_addr + off - ptr of the last traced allocation.
    traced_chunks: list[int] = field(default_factory=list)
    chunk_shift: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotContext:
    """What a backend adds around its tables when it builds a Snapshot."""

    backend: str
    kernel: str
    timestamp: float
    # Units per chunk (breakdown.nr_units): per-site bytes are sizes times this.
    nr_units: int
    kernel_stats: KernelStats | None = None
    fields_available: Mapping[tuple[str, str], bool] | None = None
    programs: Mapping[str, ProgramStats] | None = None
    maps: Mapping[str, MapUsage] | None = None
    tracking_start_time: float | None = None
    profiler_percpu_bytes: int | None = None
    # False where the kernel's alloc tracepoint has no bytes_alloc: no extension then.
    memcg_extension: bool = True
    ages: LiveAges | None = None
    breakdown: Breakdown | None = None
    chunk_map: ChunkMap | None = None
    # Names the cgroups of the site keys; None: no per-cgroup figures.
    cgroup_labels: CgroupLabels | None = None
    # Cgroups with figures of their own; the rest sum to "(other)".
    max_cgroups: int = DEFAULT_MAX_CGROUPS


def address_key(values: tuple[int, ...]) -> SiteAddressKey:
    """The raw site key from the fields of struct site_key (SITE_KEY_FORMAT), as read."""
    call_site, owner, cgroup_id, atomic, reserved = values
    return (call_site, owner, cgroup_id, bool(atomic), bool(reserved))


def is_reserved(key: SiteAddressKey) -> bool:
    """Whether the allocations under ``key`` came from the reserved chunk."""
    return key[4]


def cgroup_of(key: SiteAddressKey) -> int:
    """The cgroup v2 id of the task that made the allocations under ``key``."""
    return key[2]


def site_key(key: SiteAddressKey, symbolize: Callable[[int], str]) -> SiteKey:
    """The label set of a raw site key: its addresses named (the one place a key field
    becomes a label, with SITE_KEY_FORMAT and SiteKey). The cgroup is not in it: the
    per-site figures are summed over cgroups, the per-cgroup ones over sites."""
    addr, owner, _cgroup, atomic, reserved = key
    call_site = UNKNOWN_SITE if addr == 0 else symbolize(addr)
    return SiteKey(call_site, atomic, reserved, symbolize(owner) if owner else call_site)


def traced_live_per_unit(tables: Tables) -> int:
    """Live traced bytes of one unit outside the reserved chunk: the breakdown's input."""
    return sum(v.live_bytes for key, v in tables.sites.items() if not is_reserved(key))


def breakdown_of(
    tables: Tables, ks: KernelStats | None, nr_units: int, profiler_per_cpu: int | None
) -> Breakdown | None:
    """meminfo's Percpu in parts, from the tables and a reading of the kernel's stats of
    one moment; None without meminfo. Both backends call it, so they split alike."""
    if ks is None or ks.meminfo_percpu_bytes is None:
        return None
    return breakdown(
        BreakdownInputs(
            meminfo_bytes=ks.meminfo_percpu_bytes,
            nr_units=nr_units,
            traced_live_per_unit=traced_live_per_unit(tables),
            profiler_bytes=None if profiler_per_cpu is None else profiler_per_cpu * nr_units,
            percpu_stats=ks.percpu_stats,
        )
    )


def percpu_events(tables: Tables) -> int:
    """Every percpu event the tables have counted: allocations, frees, failures, chunks.
    Equal for two readings means no event came in between."""
    return (
        sum(tables.sizes.counts)
        + sum(v.frees for v in tables.sites.values())
        + tables.untracked_frees
        + sum(tables.failures)
        + tables.chunk_creations
        + tables.chunk_destructions
    )


def map_usage(tables: Tables, live_capacity: int, site_capacity: int) -> dict[str, MapUsage]:
    """Fill of the two tracking tables, under the map names both backends export."""
    return {
        "live": MapUsage(tables.live_entries, live_capacity),
        "sites": MapUsage(len(tables.sites), site_capacity),
    }


def tables_to_snapshot(
    tables: Tables, symbolize: Callable[[int], str], ctx: SnapshotContext
) -> Snapshot:
    """Fold addresses into function names and freeze the tables into a Snapshot."""
    sites: dict[SiteKey, SiteRecord] = {}
    by_cgroup: dict[int, SiteRecord] = {}
    for raw, v in sorted(tables.sites.items()):
        key = site_key(raw, symbolize)  # the symbolizer caches: one lookup per address
        u = ctx.nr_units
        record = SiteRecord(
            allocations=v.allocations,
            requested_bytes=v.requested_bytes,
            allocated_bytes=v.requested_bytes * u,
            frees=v.frees,
            freed_bytes=v.freed_bytes * u,
            live_allocations=v.live_allocations,
            live_bytes=v.live_bytes * u,
            memcg_extension_bytes=v.live_extension_bytes if ctx.memcg_extension else None,
        )
        sites[key] = sites[key] + record if key in sites else record
        cgroup = cgroup_of(raw)
        by_cgroup[cgroup] = by_cgroup[cgroup] + record if cgroup in by_cgroup else record
    failures = {
        (atomic, reserved): tables.failures[failure_index(atomic, reserved)]
        for atomic in (False, True)
        for reserved in (False, True)
    }
    return Snapshot(
        backend=ctx.backend,
        kernel=ctx.kernel,
        timestamp=ctx.timestamp,
        sites=sites,
        untracked_frees=tables.untracked_frees,
        size_histogram=tables.sizes.frozen(),
        failures=failures,
        failed_size_histogram=tables.failed_sizes.frozen(),
        chunk_creations=tables.chunk_creations,
        chunk_destructions=tables.chunk_destructions,
        dropped=dict(tables.dropped),
        owner_unresolved=dict(tables.owner_unresolved),
        cgroups=None
        if ctx.cgroup_labels is None
        else top_cgroups(by_cgroup, ctx.cgroup_labels, ctx.max_cgroups),
        kernel_stats=ctx.kernel_stats,
        fields_available=ctx.fields_available,
        programs=ctx.programs,
        maps=ctx.maps,
        tracking_start_time=ctx.tracking_start_time,
        profiler_percpu_bytes=ctx.profiler_percpu_bytes,
        ages=ctx.ages,
        breakdown=ctx.breakdown,
        chunk_map=ctx.chunk_map,
    )


def top_cgroups(
    by_id: Mapping[int, SiteRecord], labels: CgroupLabels, n: int
) -> dict[str, SiteRecord]:
    """Per cgroup, by label: the ``n`` with the most live bytes (ties by label), the rest
    summed under "(other)". Ids that label alike (none should) are summed."""
    named: dict[str, SiteRecord] = {}
    for cgroup_id, label in labels(by_id).items():
        record = by_id[cgroup_id]
        named[label] = named[label] + record if label in named else record
    return top_n(named, n, OTHER, weight=lambda r: r.live_bytes)
