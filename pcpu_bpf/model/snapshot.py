"""Snapshot: everything the profiler knows at one instant, as plain immutable data.

Both backends produce Snapshots and every consumer (exporter, pcpu-top) reads only
Snapshots, so the two behave identically on live and simulated data. Counters are
cumulative since the backend started; rates are differences of two Snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pcpu_bpf.kernel.percpu_stats import PercpuStats
from pcpu_bpf.model.layout import NR_SIZE_SLOTS, SIZE_BUCKETS

# Call-site labels that are not symbols.
UNKNOWN_SITE = "unknown"  # kernel without the call_site field
UNTRACKED_SITE = "untracked"  # free of an allocation made before tracing began


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
class AllocKey:
    """Label set of the allocation counters."""

    call_site: str
    atomic: bool
    reserved: bool


@dataclass(frozen=True, slots=True)
class AllocCounts:
    """Allocations under one AllocKey: how many, bytes requested, bytes really used."""

    allocations: int = 0
    requested_bytes: int = 0
    allocated_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SiteCounts:
    """Frees and live state of one call site."""

    frees: int = 0
    freed_bytes: int = 0
    live_allocations: int = 0
    live_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ProgramStats:
    """One BPF program's kernel-side counters; ``run_time_ns`` is None without bpf_stats."""

    runs: int | None
    run_time_ns: int | None
    recursion_misses: int


@dataclass(frozen=True, slots=True)
class MapUsage:
    """Fill level of one BPF map."""

    entries: int
    capacity: int


@dataclass(frozen=True, slots=True)
class KernelStats:
    """The kernel's own accounting: debugfs percpu_stats and the meminfo Percpu line.

    Either part may be missing (no debugfs, no CONFIG_PERCPU_STATS); ``errors`` names
    the parts that could not be read on this occasion, with the reason.
    """

    percpu_stats: PercpuStats | None = None
    meminfo_percpu_bytes: int | None = None
    errors: Mapping[str, str] = field(default_factory=_frozen)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative profiler state at one instant."""

    backend: str
    kernel: str
    timestamp: float  # seconds; monotonic on the live kernel, simulated time in the sim
    allocations: Mapping[AllocKey, AllocCounts] = field(default_factory=_frozen)
    sites: Mapping[str, SiteCounts] = field(default_factory=_frozen)
    size_histogram: SizeHistogram = SizeHistogram()
    # (atomic, reserved) -> failures
    failures: Mapping[tuple[bool, bool], int] = field(default_factory=_frozen)
    failed_size_histogram: SizeHistogram = SizeHistogram()
    chunk_creations: int = 0
    chunk_destructions: int = 0
    dropped: Mapping[str, int] = field(default_factory=_frozen)
    # Optional parts: None where the backend has no such data.
    kernel_stats: KernelStats | None = None
    # (event, field) -> does this kernel's tracepoint have it
    fields_available: Mapping[tuple[str, str], bool] | None = None
    programs: Mapping[str, ProgramStats] | None = None
    maps: Mapping[str, MapUsage] | None = None

    def site_names(self) -> list[str]:
        """Every call site that appears anywhere in the Snapshot, sorted."""
        names = {key.call_site for key in self.allocations} | set(self.sites)
        return sorted(names)

    def allocations_by_site(self) -> dict[str, AllocCounts]:
        """Allocation counters summed over atomic/reserved, per call site."""
        out: dict[str, AllocCounts] = {}
        for key, c in self.allocations.items():
            prev = out.get(key.call_site, AllocCounts())
            out[key.call_site] = AllocCounts(
                prev.allocations + c.allocations,
                prev.requested_bytes + c.requested_bytes,
                prev.allocated_bytes + c.allocated_bytes,
            )
        return out

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())
