"""The metric catalog: every family pcpu-bpf exports, and the place of the Snapshot it shows.

This table is the one description of the exposition. The collector (prometheus.py) writes
families from it, the exposition reader (exposition.py) rebuilds a Snapshot from it, and
docs/metrics.md is checked against it. Each family binds to one place of the Snapshot and
the binding knows both directions (Snapshot -> samples, sample -> Snapshot draft), so
nothing is written twice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from pcpu_bpf.model.kernel_stats import BpfMapOwner
from pcpu_bpf.model.layout import SIZE_BUCKETS
from pcpu_bpf.model.snapshot import AgeKey, SiteKey, Snapshot

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# Parts of a scrape that succeed or fail on their own: pcpu_collector_success{collector}.
# "snapshot" is the backend read itself; when it fails only the exporter's families remain.
SNAPSHOT, TRACING, PERCPU_STATS, MEMINFO = "snapshot", "tracing", "percpu_stats", "meminfo"
BPF_MAPS, CGROUPS = "bpf_maps", "cgroups"
COLLECTORS = (SNAPSHOT, TRACING, PERCPU_STATS, MEMINFO, BPF_MAPS, CGROUPS)
EXPORTER = "exporter"  # families about the exporter itself, not taken from a Snapshot

LabelValues = tuple[str, ...]
Sample = tuple[LabelValues, float]
# What the exposition reader fills: nested dicts along the bindings' paths.
Draft = dict[str, Any]


def bool_label(value: bool) -> str:
    """How a boolean label value is spelled."""
    return "true" if value else "false"


def _parse_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"not a boolean label value: {text!r}")
    return text == "true"


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def _slot(draft: Draft, path: tuple[str, ...]) -> dict[Any, Any]:
    for name in path:
        draft = draft.setdefault(name, {})
    return draft


# ---- keys: how a mapping's key becomes label values and back --------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """A mapping key as label values: a str, a tuple of str/bool, or a dataclass of them."""

    kinds: tuple[type, ...]  # str or bool, one per label
    of: Callable[..., Any] | None = None  # key constructor; None: a plain str or tuple

    def labels(self, key: Any) -> LabelValues:
        return _labels(self.kinds, self.of is not None, key)

    def key(self, labels: LabelValues) -> Any:
        values = tuple(
            _parse_bool(v) if k is bool else v for k, v in zip(self.kinds, labels, strict=True)
        )
        if self.of is not None:
            return self.of(*values)
        return values[0] if len(values) == 1 else values


@functools.lru_cache(maxsize=1 << 16)
def _labels(kinds: tuple[type, ...], is_dataclass: bool, key: Any) -> LabelValues:
    # Cached: every scrape labels the same few thousand keys once per family.
    if isinstance(key, str):
        values: tuple[Any, ...] = (key,)
    elif is_dataclass:
        values = tuple(getattr(key, f.name) for f in fields(key))
    else:
        values = tuple(key)
    return tuple(bool_label(v) if k is bool else str(v) for k, v in zip(kinds, values, strict=True))


NAME = Key((str,))
FLAGS = Key((bool, bool))
PAIR = Key((str, str))
SITE = Key((str, bool, bool, str), SiteKey)
AGE = Key((str, bool, bool, str, str), AgeKey)
MAP_OWNER = Key((str, str, str), BpfMapOwner)


# ---- bindings: where in a Snapshot a family's numbers live -----------------------------


class Binding:
    """Where a family's numbers live in a Snapshot; both directions."""

    def samples(self, snap: Snapshot) -> list[Sample]:
        """The family's samples in this Snapshot (none where the part is absent)."""
        raise NotImplementedError

    def load(self, draft: Draft, labels: LabelValues, value: float) -> None:
        """Put one sample back into a draft of the Snapshot."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Scalar(Binding):
    """One number at an attribute path; ``scale`` turns the stored unit into the exported."""

    path: tuple[str, ...]
    scale: float = 1.0

    def samples(self, snap: Snapshot) -> list[Sample]:
        value = _get(snap, self.path)
        return [] if value is None else [((), value * self.scale)]

    def load(self, draft: Draft, labels: LabelValues, value: float) -> None:
        _slot(draft, self.path[:-1])[self.path[-1]] = value / self.scale


@dataclass(frozen=True, slots=True)
class Table(Binding):
    """A mapping at ``path``: keys become labels, ``attr`` of each value (or the value)."""

    path: tuple[str, ...]
    key: Key
    attr: str | None = None
    scale: float = 1.0

    def samples(self, snap: Snapshot) -> list[Sample]:
        mapping: Mapping[Any, Any] | None = _get(snap, self.path)
        out: list[Sample] = []
        for key, record in sorted((mapping or {}).items()):
            value = record if self.attr is None else getattr(record, self.attr)
            if value is not None:
                out.append((self.key.labels(key), value * self.scale))
        return out

    def load(self, draft: Draft, labels: LabelValues, value: float) -> None:
        table = _slot(draft, self.path)
        key = self.key.key(labels)
        if self.attr is None:
            table[key] = value / self.scale
        else:
            table.setdefault(key, {})[self.attr] = value / self.scale


@dataclass(frozen=True, slots=True)
class Histogram(Binding):
    """A SizeHistogram at ``path``: per-bucket counts become cumulative buckets."""

    path: tuple[str, ...]

    def samples(self, snap: Snapshot) -> list[Sample]:
        raise TypeError("a histogram is written with buckets(), not samples()")

    def buckets(self, snap: Snapshot) -> tuple[list[tuple[str, float]], float]:
        """(le, cumulative count) pairs and the sum, as HistogramMetricFamily takes them."""
        hist = _get(snap, self.path)
        return [(le_label(b), float(n)) for b, n in hist.cumulative()], float(hist.sum)

    def load_bucket(self, draft: Draft, le: str, value: float) -> None:
        _slot(draft, self.path).setdefault("buckets", {})[float(le)] = value

    def load(self, draft: Draft, labels: LabelValues, value: float) -> None:
        _slot(draft, self.path)["sum"] = value


def le_label(bound: float) -> str:
    """The le spelling client_python's own Histogram uses: "4.0", ..., "+Inf"."""
    return "+Inf" if math.isinf(bound) else str(bound)


HISTOGRAM_BOUNDS = tuple(float(b) for b in SIZE_BUCKETS) + (math.inf,)


@dataclass(frozen=True, slots=True)
class Age(Binding):
    """Seconds from the time at ``path`` to the Snapshot's own timestamp (same clock)."""

    path: tuple[str, ...]

    def samples(self, snap: Snapshot) -> list[Sample]:
        then = _get(snap, self.path)
        return [] if then is None else [((), max(0.0, snap.timestamp - then))]

    def load(self, draft: Draft, labels: LabelValues, value: float) -> None:
        _slot(draft, self.path[:-1])[self.path[-1]] = draft["timestamp"] - value


class ExporterState(Binding):
    """A family about the exporter itself (its version, which parts it served)."""

    def samples(self, snap: Snapshot) -> list[Sample]:
        return []

    def load(self, draft: Draft, labels: LabelValues, value: float) -> None:
        pass


# ---- the catalog -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: what it is called, what it means, where its numbers come from."""

    name: str
    kind: str  # COUNTER, GAUGE or HISTOGRAM
    help: str
    labels: tuple[str, ...]
    part: str  # the collector part that serves it (COLLECTORS), or EXPORTER
    binding: Binding
    backends: tuple[str, ...] = ("bpf", "sim")  # which backends fill it
    # Bytes of one unit (one CPU's copy: ONE_UNIT) or of all units (ALL_UNITS); None when
    # the family is not an amount of memory. See BYTES_RULE.
    one_unit: bool | None = None
    formerly: tuple[str, ...] = ()  # earlier names; the exposition reader still takes them

    @property
    def unit(self) -> str:
        """The unit its name ends in (Prometheus naming): bytes, seconds or none."""
        base = self.name.removesuffix("_total")
        return next((u for u in ("bytes", "seconds") if base.endswith("_" + u)), "")

    @property
    def unit_text(self) -> str:
        """The unit as docs/metrics.md shows it: bytes say whose (one unit, all units)."""
        if self.unit == "bytes" and self.one_unit is not None:
            return "bytes, one unit" if self.one_unit else "bytes, all units"
        return self.unit or "-"


# How a bytes family says whose bytes it counts (tests/test_catalog.py holds every family
# to it): an amount of memory is for all units (every possible CPU's copy, as meminfo
# counts) unless its name ends in _unit_bytes; sizes of what callers ask for (requested,
# allocation_size) are per unit by the percpu API's own definition. Either way the HELP
# says "all units" or "one unit"; the two boot-time layout sizes that are neither say so.
ONE_UNIT, ALL_UNITS = True, False


def _site(attr: str) -> Binding:
    return Table(("sites",), SITE, attr)


def _stat(*path: str) -> Binding:
    return Scalar(("kernel_stats", "percpu_stats", *path))


_SITE_LABELS = ("call_site", "atomic", "reserved", "owner")
# Labels added to families after their first release: an earlier daemon's exposition lacks
# them, and the reader takes them as empty, the key's default (a site without an owner
# label is owned by its call site).
LATER_LABELS = frozenset({"owner"})


def _cgroup(attr: str) -> Binding:
    return Table(("cgroups",), NAME, attr)


_CGROUP_HELP = (
    " By the allocating task's cgroup v2 path (on a hybrid host the unified hierarchy's), "
    '" (deleted)" appended once the cgroup is removed; the --max-cgroups cgroups with the '
    'most live bytes, the rest summed as cgroup="(other)".'
)
_BPF = ("bpf",)

CATALOG: tuple[Family, ...] = (
    # The exporter itself.
    Family(
        "pcpu_exporter_info",
        GAUGE,
        "Always 1; the exporter's build and the kernel's facts as labels: the exporter version, "
        "the backend (bpf = live kernel, sim = simulated data) and the kernel release. Join it "
        "for them: * on(instance) group_left(kernel) pcpu_exporter_info.",
        ("version", "backend", "kernel"),
        EXPORTER,
        ExporterState(),
    ),
    Family(
        "pcpu_collector_success",
        GAUGE,
        "1 if this part of the metrics was served by the last scrape, 0 if it failed "
        "(see the daemon's log) or could not be served.",
        ("collector",),
        EXPORTER,
        ExporterState(),
    ),
    Family(
        "pcpu_collector_errors_total",
        COUNTER,
        "Scrapes in which this part failed; the rest of the metrics was still served. "
        "The daemon's log says why.",
        ("collector",),
        EXPORTER,
        ExporterState(),
    ),
    # Tracing: per call site.
    Family(
        "pcpu_allocations_total",
        COUNTER,
        "Percpu allocations since tracing began, by kernel function that asked "
        "(call_site), atomic (no sleeping), reserved-chunk use and owner: for a call site "
        "that is a generic helper (percpu_counter, percpu_ref, BPF map, netdev, cgroup "
        "allocators), the first caller on the stack that is none, with pcpu-bpf serve "
        "--owners; else the call site.",
        _SITE_LABELS,
        TRACING,
        _site("allocations"),
    ),
    Family(
        "pcpu_requested_bytes_total",
        COUNTER,
        "Bytes requested by percpu allocations since tracing began, for one unit (one CPU's "
        "copy: the size the caller passed); pcpu_allocated_bytes_total counts all units.",
        _SITE_LABELS,
        TRACING,
        _site("requested_bytes"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_allocated_bytes_total",
        COUNTER,
        "Percpu bytes of the allocations since tracing began, on all units (the size on every "
        "unit, as meminfo's Percpu counts them); the memory-cgroup extension the tracepoint's "
        "bytes_alloc adds is apart (pcpu_memcg_extension_bytes).",
        _SITE_LABELS,
        TRACING,
        _site("allocated_bytes"),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_frees_total",
        COUNTER,
        "Frees of traced percpu allocations, by the call site that allocated them.",
        _SITE_LABELS,
        TRACING,
        _site("frees"),
    ),
    Family(
        "pcpu_freed_bytes_total",
        COUNTER,
        "Percpu bytes returned by frees of traced allocations, on all units (the size on every "
        "unit).",
        _SITE_LABELS,
        TRACING,
        _site("freed_bytes"),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_live_allocations",
        GAUGE,
        "Traced percpu allocations not freed yet; a call site that only grows is a leak suspect.",
        _SITE_LABELS,
        TRACING,
        _site("live_allocations"),
    ),
    Family(
        "pcpu_live_bytes",
        GAUGE,
        "Percpu bytes held by live traced allocations, on all units (the size on every unit): "
        "allocated minus freed, exactly, unless tracking dropped some "
        "(pcpu_tracking_dropped_total). Summed over the sites outside the reserved chunk: "
        'pcpu_memory_bytes{part="traced_live"}.',
        _SITE_LABELS,
        TRACING,
        _site("live_bytes"),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_memcg_extension_bytes",
        GAUGE,
        "What the tracepoint's bytes_alloc adds to live traced allocations beyond their "
        "size on every possible CPU: the memory-cgroup extension, slab memory charged with "
        "them for all units together, not part of pcpu_meminfo_bytes. Absent where the "
        "kernel has no bytes_alloc.",
        _SITE_LABELS,
        TRACING,
        _site("memcg_extension_bytes"),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_live_oldest_age_seconds",
        GAUGE,
        "Age of the oldest live traced allocation of the site, as of the last walk of the "
        "live table (at most once per --min-read-interval: pcpu_kernel_stats_age_seconds).",
        _SITE_LABELS,
        TRACING,
        Table(("ages", "oldest_seconds"), SITE),
    ),
    Family(
        "pcpu_live_by_age_bytes",
        GAUGE,
        'Live traced percpu bytes on all units by age band, not cumulative: age="1m" younger '
        'than a minute, "1h" a minute to an hour, "1d" an hour to a day, "older" a day or '
        "more; a band without bytes has no series. Summed over age: pcpu_live_bytes, as of "
        "the last walk of the live table.",
        (*_SITE_LABELS, "age"),
        TRACING,
        Table(("ages", "bytes_by_age"), AGE),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_cgroup_allocations_total",
        COUNTER,
        "Percpu allocations since tracing began, by cgroup." + _CGROUP_HELP,
        ("cgroup",),
        TRACING,
        _cgroup("allocations"),
    ),
    Family(
        "pcpu_cgroup_frees_total",
        COUNTER,
        "Frees of traced percpu allocations, by the cgroup that allocated them." + _CGROUP_HELP,
        ("cgroup",),
        TRACING,
        _cgroup("frees"),
    ),
    Family(
        "pcpu_cgroup_live_allocations",
        GAUGE,
        "Traced percpu allocations not freed yet, by the cgroup that made them." + _CGROUP_HELP,
        ("cgroup",),
        TRACING,
        _cgroup("live_allocations"),
    ),
    Family(
        "pcpu_cgroup_live_bytes",
        GAUGE,
        "Percpu bytes held by live traced allocations, on all units, by the cgroup that made "
        "them (a dying memory cgroup's own percpu statistics are made by whoever created "
        "it, and count there)." + _CGROUP_HELP,
        ("cgroup",),
        TRACING,
        _cgroup("live_bytes"),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_owner_unresolved_total",
        COUNTER,
        "Allocations at a known helper whose owner was not found (with --owners), by reason: "
        "no_stack (the stack could not be taken), site_not_on_stack (the call site's frame "
        "is not among the frames taken), only_helpers (every frame taken above it is a "
        "helper). Their owner label is the call site.",
        ("reason",),
        TRACING,
        Table(("owner_unresolved",), NAME),
    ),
    Family(
        "pcpu_untracked_frees_total",
        COUNTER,
        "Frees of percpu allocations tracing never saw: made before it began, or not "
        "tracked because a table was full.",
        (),
        TRACING,
        Scalar(("untracked_frees",)),
    ),
    # Tracing: sizes, failures, chunks.
    Family(
        "pcpu_allocation_size_bytes",
        HISTOGRAM,
        "Requested size of percpu allocations since tracing began, for one unit (log2 buckets).",
        (),
        TRACING,
        Histogram(("size_histogram",)),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_allocation_failures_total",
        COUNTER,
        "Percpu allocations that failed since tracing began; atomic failures mean the "
        "atomic reserve ran dry, others mean no memory or no address space for a new chunk.",
        ("atomic", "reserved"),
        TRACING,
        Table(("failures",), FLAGS),
    ),
    Family(
        "pcpu_failed_allocation_size_bytes",
        HISTOGRAM,
        "Requested size of failed percpu allocations since tracing began, for one unit (log2 "
        "buckets).",
        (),
        TRACING,
        Histogram(("failed_size_histogram",)),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_chunk_creations_total",
        COUNTER,
        "Percpu chunks created since tracing began; steady creation and destruction is "
        "chunk churn.",
        (),
        TRACING,
        Scalar(("chunk_creations",)),
    ),
    Family(
        "pcpu_chunk_destructions_total",
        COUNTER,
        "Percpu chunks destroyed since tracing began.",
        (),
        TRACING,
        Scalar(("chunk_destructions",)),
    ),
    # Tracing: the tracer's own state.
    Family(
        "pcpu_tracepoint_field_available",
        GAUGE,
        "1 if this kernel's percpu tracepoint has the field, 0 if not (call_site and "
        "bytes_alloc need Linux 5.19 or later).",
        ("event", "field"),
        TRACING,
        Table(("fields_available",), PAIR),
    ),
    Family(
        "pcpu_tracking_dropped_total",
        COUNTER,
        "Allocations not tracked because a table was full; raise --live-capacity or "
        "--site-capacity if this grows. chunk_table_full counts chunks created since "
        "tracing began that the chunk table had no room for (pcpu-top --chunks does not "
        "draw them).",
        ("reason",),
        TRACING,
        Table(("dropped",), NAME),
    ),
    Family(
        "pcpu_bpf_program_runs_total",
        COUNTER,
        "Runs of each BPF program (needs sysctl kernel.bpf_stats_enabled=1).",
        ("program",),
        TRACING,
        Table(("programs",), NAME, "runs"),
        _BPF,
    ),
    Family(
        "pcpu_bpf_program_run_seconds_total",
        COUNTER,
        "CPU time spent in each BPF program (needs sysctl kernel.bpf_stats_enabled=1).",
        ("program",),
        TRACING,
        Table(("programs",), NAME, "run_time_ns", scale=1e-9),
        _BPF,
    ),
    Family(
        "pcpu_bpf_program_recursion_misses_total",
        COUNTER,
        "Events the kernel did not deliver to the program because another BPF program was "
        "running on that CPU; those events are missing from the counters.",
        ("program",),
        TRACING,
        Table(("programs",), NAME, "recursion_misses"),
        _BPF,
    ),
    Family(
        "pcpu_bpf_map_entries",
        GAUGE,
        "Entries in each tracking table now.",
        ("map",),
        TRACING,
        Table(("maps",), NAME, "entries"),
    ),
    Family(
        "pcpu_bpf_map_capacity",
        GAUGE,
        "Capacity of each tracking table; entries at capacity means drops "
        "(pcpu_tracking_dropped_total).",
        ("map",),
        TRACING,
        Table(("maps",), NAME, "capacity"),
    ),
    # The kernel's own accounting, as read on one occasion.
    Family(
        "pcpu_kernel_stats_age_seconds",
        GAUGE,
        "Seconds since the kernel statistics served (pcpu_stats_*, pcpu_meminfo_bytes, "
        "pcpu_memory_bytes) were read, and the live table walked for the ages. Reading debugfs "
        "percpu_stats holds the allocator's lock and a full live table takes a while to walk, "
        "so the daemon does both at most once per --min-read-interval, however many scrape it.",
        (),
        SNAPSHOT,
        Age(("kernel_stats", "read_at")),
    ),
    Family(
        "pcpu_tracking_start_time_seconds",
        GAUGE,
        "When the counters began (seconds since the epoch). A restart that adopts the "
        "pinned maps keeps it; a new or replaced set starts counting again from zero.",
        (),
        TRACING,
        Scalar(("tracking_start_time",)),
        _BPF,
    ),
    Family(
        "pcpu_profiler_percpu_bytes",
        GAUGE,
        "Percpu memory the profiler's own BPF maps and programs hold, on all units (every "
        "possible CPU; part of pcpu_meminfo_bytes). The simulator allocates the same before "
        "its tracing begins.",
        (),
        TRACING,
        Scalar(("profiler_percpu_bytes",)),
        one_unit=ALL_UNITS,
    ),
    # The kernel's own accounting: debugfs percpu_stats.
    Family(
        "pcpu_stats_allocations_total",
        COUNTER,
        "Percpu allocations since boot, from the kernel's percpu_stats (nr_alloc).",
        (),
        PERCPU_STATS,
        _stat("globals", "nr_alloc"),
    ),
    Family(
        "pcpu_stats_frees_total",
        COUNTER,
        "Percpu frees since boot, from the kernel's percpu_stats (nr_dealloc).",
        (),
        PERCPU_STATS,
        _stat("globals", "nr_dealloc"),
    ),
    Family(
        "pcpu_stats_live_allocations",
        GAUGE,
        "Percpu allocations live now, all callers since boot (nr_cur_alloc); a steady "
        "climb is a leak candidate.",
        (),
        PERCPU_STATS,
        _stat("globals", "nr_cur_alloc"),
    ),
    Family(
        "pcpu_stats_max_live_allocations",
        GAUGE,
        "Highest number of simultaneously live percpu allocations since boot (nr_max_alloc).",
        (),
        PERCPU_STATS,
        _stat("globals", "nr_max_alloc"),
    ),
    Family(
        "pcpu_stats_chunks",
        GAUGE,
        "Percpu chunks now (nr_chunks); each costs a unit per possible CPU.",
        (),
        PERCPU_STATS,
        _stat("globals", "nr_chunks"),
    ),
    Family(
        "pcpu_stats_max_chunks",
        GAUGE,
        "Most percpu chunks ever present at once since boot (nr_max_chunks).",
        (),
        PERCPU_STATS,
        _stat("globals", "nr_max_chunks"),
    ),
    Family(
        "pcpu_stats_min_allocation_size_bytes",
        GAUGE,
        "Smallest percpu request size since boot, for one unit (min_alloc_size).",
        (),
        PERCPU_STATS,
        _stat("globals", "min_alloc_size"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_max_allocation_size_bytes",
        GAUGE,
        "Largest percpu request size since boot, for one unit (max_alloc_size).",
        (),
        PERCPU_STATS,
        _stat("globals", "max_alloc_size"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_empty_populated_pages",
        GAUGE,
        "Populated but unused percpu pages (empty_pop_pages); the kernel keeps a few for "
        "atomic allocations and reclaims the excess in its balance work.",
        (),
        PERCPU_STATS,
        _stat("globals", "empty_pop_pages"),
    ),
    Family(
        "pcpu_stats_free_unit_bytes",
        GAUGE,
        "Free bytes of one unit, summed over all chunks (free_bytes), unpopulated pages "
        "included: address space the allocator can still hand out, not memory.",
        (),
        PERCPU_STATS,
        _stat("totals", "free_bytes"),
        formerly=("pcpu_stats_free_bytes",),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_fragmented_unit_bytes",
        GAUGE,
        "Free bytes of one unit stranded between allocations, summed over chunks (sum_frag); "
        "high values with many chunks mean fragmentation, not demand.",
        (),
        PERCPU_STATS,
        _stat("totals", "fragmented_bytes"),
        formerly=("pcpu_stats_fragmented_bytes",),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_max_fragment_unit_bytes",
        GAUGE,
        "Largest stranded free fragment in one unit of any chunk (max_frag).",
        (),
        PERCPU_STATS,
        _stat("totals", "max_fragment_bytes"),
        formerly=("pcpu_stats_max_fragment_bytes",),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_contig_free_unit_bytes",
        GAUGE,
        "Largest contiguous free area in one unit of any chunk (contig_bytes, a kernel hint); "
        "a request larger than this needs a new chunk.",
        (),
        PERCPU_STATS,
        _stat("totals", "max_contig_bytes"),
        formerly=("pcpu_stats_contig_free_bytes",),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_unit_size_bytes",
        GAUGE,
        "Size of one unit, one CPU's share of every chunk (boot-time geometry).",
        (),
        PERCPU_STATS,
        _stat("info", "unit_size"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_static_size_bytes",
        GAUGE,
        "Static percpu variables of the kernel and modules, in one unit (boot-time geometry).",
        (),
        PERCPU_STATS,
        _stat("info", "static_size"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_reserved_size_bytes",
        GAUGE,
        "Reserved area for module static percpu variables, in one unit (boot-time geometry).",
        (),
        PERCPU_STATS,
        _stat("info", "reserved_size"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_dynamic_size_bytes",
        GAUGE,
        "Dynamic area of the first chunk, in one unit (boot-time geometry).",
        (),
        PERCPU_STATS,
        _stat("info", "dyn_size"),
        one_unit=ONE_UNIT,
    ),
    Family(
        "pcpu_stats_atom_size_bytes",
        GAUGE,
        "Alignment of the first chunk's boot-time allocations (atom_size; boot-time geometry): a "
        "size in the address space, not the bytes of one unit or of all units.",
        (),
        PERCPU_STATS,
        _stat("info", "atom_size"),
    ),
    Family(
        "pcpu_stats_alloc_size_bytes",
        GAUGE,
        "Size of each boot-time allocation of the first chunk, a group of units (alloc_size; "
        "boot-time geometry): a size in the address space, not the bytes of one unit or of all "
        "units.",
        (),
        PERCPU_STATS,
        _stat("info", "alloc_size"),
    ),
    # Who holds percpu memory, as the kernel's objects say: BPF maps, cgroups.
    Family(
        "pcpu_bpf_map_percpu_bytes",
        GAUGE,
        "Percpu memory each BPF map on the host holds, on all units (every possible CPU's "
        "copy): per-CPU values and the map's per-CPU bookkeeping, by map name, map type and "
        'the programs using it (program="" for none). The largest --max-bpf-maps series; '
        'the rest summed as map="(other)". Listing needs CAP_SYS_ADMIN.',
        ("map", "map_type", "program"),
        BPF_MAPS,
        Table(("kernel_stats", "bpf_maps"), MAP_OWNER),
        _BPF,
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_cgroup_dying_descendants",
        GAUGE,
        "Cgroups removed but not freed yet (still pinned, e.g. by page cache charged to "
        "a memory cgroup, with their percpu statistics), by hierarchy: unified is cgroup "
        "v2's cgroup.stat nr_dying_descendants, memory the v1 memory controller's count "
        "minus its directories. The simulator's memcg-churn counts its zombies as unified.",
        ("hierarchy",),
        CGROUPS,
        Table(("kernel_stats", "cgroups", "dying"), NAME),
    ),
    Family(
        "pcpu_cgroup_memory_percpu_bytes",
        GAUGE,
        "Percpu memory the cgroup v2 memory controller charges to each cgroup itself, on "
        "all units with the memcg extension (memory.stat percpu minus its children's, so "
        "the series add up; a dying child's stays with its parent), also for memory "
        "allocated before tracing began. The largest --max-cgroups cgroups; the rest "
        'summed as cgroup="(other)".',
        ("cgroup",),
        CGROUPS,
        Table(("kernel_stats", "cgroups", "memory_percpu_bytes"), NAME),
        _BPF,
        one_unit=ALL_UNITS,
    ),
    # The kernel's own accounting: /proc/meminfo.
    Family(
        "pcpu_meminfo_bytes",
        GAUGE,
        "Memory used by the percpu allocator on all units (every possible CPU), the Percpu: "
        "line of /proc/meminfo; pcpu_memory_bytes splits it into parts, sum(pcpu_live_bytes) "
        "being the traced one.",
        (),
        MEMINFO,
        Scalar(("kernel_stats", "meminfo_percpu_bytes")),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_memory_bytes",
        GAUGE,
        "pcpu_meminfo_bytes in parts that add up to it, on all units: static, reserved, "
        "traced_live, untraced_live (live before tracing began, or not tracked), profiler, "
        "empty_pages, free_in_used_pages, unexplained. Parts that need percpu_stats are "
        "absent without it, and the rest is unexplained; docs/metrics.md has the arithmetic.",
        ("part",),
        MEMINFO,
        Table(("breakdown", "parts"), NAME),
        one_unit=ALL_UNITS,
    ),
    Family(
        "pcpu_memory_bound_violations_total",
        COUNTER,
        "Scrapes whose pcpu_memory_bytes broke a bound of this part (a derived part below "
        "0 or above what percpu_stats allows; part=units: meminfo is not whole pages of "
        "the units assumed). settled=false: percpu events came in while the parts were "
        "read, so they mix two moments and a broken bound need not be the arithmetic's. "
        "The parts are served unclipped; the daemon's log says which bound.",
        ("part", "settled"),
        EXPORTER,
        ExporterState(),
    ),
)

BY_NAME: dict[str, Family] = {f.name: f for f in CATALOG}


def families_of(part: str) -> Iterable[Family]:
    """The catalog's families served by one collector part, in exposition order."""
    return (f for f in CATALOG if f.part == part)
