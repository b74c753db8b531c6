"""Snapshot: everything the profiler knows at one instant, as plain immutable data.

Both backends produce Snapshots and every consumer (exporter, pcpu-top) reads only
Snapshots, so the two behave identically on live and simulated data. Counters are
cumulative since tracing began; rates are differences of two Snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pcpu_bpf.model.breakdown import Breakdown
from pcpu_bpf.model.chunk_map import ChunkMap
from pcpu_bpf.model.events import ALL_FIELDS
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.layout import (
    DROP_REASONS,
    NR_SIZE_SLOTS,
    OWNER_UNRESOLVED_REASONS,
    SIZE_BUCKETS,
)

# The call-site label of an allocation on a kernel without the call_site field.
UNKNOWN_SITE = "unknown"


def _frozen(mapping: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class SizeHistogram:
    """Log2 histogram of request sizes; ``counts`` are per bucket, not cumulative."""

    counts: tuple[int, ...] = (0,) * NR_SIZE_SLOTS
    sum: int = 0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf, as Prometheus wants."""
        bounds = [float(b) for b in SIZE_BUCKETS] + [float("inf")]
        out, running = [], 0
        for bound, n in zip(bounds, self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True, order=True)
class SiteKey:
    """Who allocated, and how: the label set of every per-site figure. ``owner`` is whom
    a generic helper allocated for (model/owners.py); the call site itself where it is
    no helper or no owner was found (the default)."""

    call_site: str
    atomic: bool = False
    reserved: bool = False
    owner: str = ""

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", self.call_site)


@dataclass(frozen=True, slots=True)
class SiteRecord:
    """Everything counted under one site key: allocations, frees and what is still live.

    Bytes: ``requested`` is the size asked for (one unit's copy, rounded by the allocator
    to 4 bytes); ``allocated``, ``freed`` and ``live`` are percpu bytes in meminfo's sense,
    the size on every unit, so live bytes add up to the breakdown's traced_live.
    ``memcg_extension_bytes`` is what the tracepoint's bytes_alloc adds for live traced
    allocations beyond that (slab memory, not Percpu); None where the kernel has no
    bytes_alloc.
    """

    allocations: int = 0
    requested_bytes: int = 0
    allocated_bytes: int = 0
    frees: int = 0
    freed_bytes: int = 0
    live_allocations: int = 0
    live_bytes: int = 0
    memcg_extension_bytes: int | None = None

    def __add__(self, other: SiteRecord) -> SiteRecord:
        ext = self.memcg_extension_bytes, other.memcg_extension_bytes
        return SiteRecord(
            allocations=self.allocations + other.allocations,
            requested_bytes=self.requested_bytes + other.requested_bytes,
            allocated_bytes=self.allocated_bytes + other.allocated_bytes,
            frees=self.frees + other.frees,
            freed_bytes=self.freed_bytes + other.freed_bytes,
            live_allocations=self.live_allocations + other.live_allocations,
            live_bytes=self.live_bytes + other.live_bytes,
            memcg_extension_bytes=None if ext == (None, None) else (ext[0] or 0) + (ext[1] or 0),
        )


@dataclass(frozen=True, slots=True, order=True)
class AgeKey:
    """A site key and an age band: the label set of pcpu_live_by_age_bytes."""

    call_site: str
    atomic: bool
    reserved: bool
    owner: str
    age: str


@dataclass(frozen=True, slots=True)
class LiveAges:
    """How old the live traced allocations are, from a walk of the live table.

    Bytes are percpu bytes in meminfo's sense, as SiteRecord.live_bytes. A band holds the
    allocations younger than its name and older than the band before (model/ages.py);
    bands without bytes are left out. ``min_age``, when asked for (pcpu-top --min-age),
    adds the count and bytes of each site's allocations at least that many seconds old.
    """

    oldest_seconds: Mapping[SiteKey, float] = field(default_factory=_frozen)
    bytes_by_age: Mapping[AgeKey, int] = field(default_factory=_frozen)
    min_age: float | None = None
    old_allocations: Mapping[SiteKey, int] = field(default_factory=_frozen)
    old_bytes: Mapping[SiteKey, int] = field(default_factory=_frozen)


@dataclass(frozen=True, slots=True)
class ProgramStats:
    """One BPF program's kernel-side counters; runs and run time need bpf_stats."""

    runs: int | None = None
    run_time_ns: int | None = None
    recursion_misses: int = 0


@dataclass(frozen=True, slots=True)
class MapUsage:
    """Fill level of one BPF map."""

    entries: int = 0
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative profiler state at one instant.

    ``by_call_site`` and ``totals`` are computed once, from ``sites``.
    """

    backend: str
    kernel: str
    timestamp: float  # seconds; monotonic on the live kernel, simulated time in the sim
    sites: Mapping[SiteKey, SiteRecord] = field(default_factory=_frozen)
    # Frees of allocations tracing never saw (made before it began, or dropped by a full
    # table): they belong to no known site.
    untracked_frees: int = 0
    size_histogram: SizeHistogram = SizeHistogram()
    # (atomic, reserved) -> failures
    failures: Mapping[tuple[bool, bool], int] = field(default_factory=_frozen)
    failed_size_histogram: SizeHistogram = SizeHistogram()
    chunk_creations: int = 0
    chunk_destructions: int = 0
    dropped: Mapping[str, int] = field(default_factory=_frozen)
    # Allocations at a known helper whose owner was not found, by reason (model/layout.py).
    owner_unresolved: Mapping[str, int] = field(default_factory=_frozen)
    # Per cgroup of the allocating task (its path; " (deleted)" once removed): the site
    # records summed, the largest by live bytes and "(other)". None: not known here.
    cgroups: Mapping[str, SiteRecord] | None = None
    # Optional parts: None where the backend has no such data.
    kernel_stats: KernelStats | None = None
    # (event, field) -> does this kernel's tracepoint have it
    fields_available: Mapping[tuple[str, str], bool] | None = None
    programs: Mapping[str, ProgramStats] | None = None
    maps: Mapping[str, MapUsage] | None = None
    # When the counters began (seconds since the epoch): a restart that adopts the
    # pinned maps keeps it, a new set starts it again.
    tracking_start_time: float | None = None
    # Percpu memory the profiler's own maps and programs hold, on all possible CPUs.
    profiler_percpu_bytes: int | None = None
    # How old the live traced allocations are (a walk of the live table).
    ages: LiveAges | None = None
    # meminfo's Percpu in parts (model/breakdown.py), computed with the kernel stats.
    breakdown: Breakdown | None = None
    # Each chunk's pages and free space, where the backend knows them.
    chunk_map: ChunkMap | None = None
    by_call_site: Mapping[str, SiteRecord] = field(init=False, repr=False, compare=False)
    totals: SiteRecord = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Series whose label values are known in advance exist from the start, at 0, so
        # queries and alerts never meet a gap.
        failures = {(a, r): 0 for a in (False, True) for r in (False, True)}
        object.__setattr__(self, "failures", _frozen({**failures, **self.failures}))
        dropped = dict.fromkeys(DROP_REASONS, 0)
        object.__setattr__(self, "dropped", _frozen({**dropped, **self.dropped}))
        unresolved = dict.fromkeys(OWNER_UNRESOLVED_REASONS, 0)
        object.__setattr__(
            self, "owner_unresolved", _frozen({**unresolved, **self.owner_unresolved})
        )
        if self.cgroups is not None:
            object.__setattr__(self, "cgroups", _frozen(self.cgroups))
        if self.fields_available is not None:
            known = dict.fromkeys(ALL_FIELDS, False)
            object.__setattr__(
                self, "fields_available", _frozen({**known, **self.fields_available})
            )
        by_site: dict[str, SiteRecord] = {}
        for key in sorted(self.sites):
            by_site[key.call_site] = by_site.get(key.call_site, SiteRecord()) + self.sites[key]
        totals = sum(by_site.values(), SiteRecord())
        object.__setattr__(self, "by_call_site", MappingProxyType(by_site))
        object.__setattr__(self, "totals", totals)

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())
