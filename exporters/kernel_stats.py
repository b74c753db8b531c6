"""Metric families for the kernel's own percpu accounting: debugfs percpu_stats and meminfo."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pcpu_bpf.kernel import percpu_stats as ps
from pcpu_bpf.kernel.percpu_stats import PercpuStats

_Getter = Callable[[PercpuStats], int]

# (name, counter?, help, value) in exposition order. Help says what the number means for
# someone deciding whether percpu memory is a problem on this host.
PERCPU_STATS_FAMILIES: tuple[tuple[str, bool, str, _Getter], ...] = (
    (
        "pcpu_stats_allocations_total",
        True,
        "Percpu allocations since boot, from the kernel's percpu_stats (nr_alloc).",
        lambda s: s.globals.nr_alloc,
    ),
    (
        "pcpu_stats_frees_total",
        True,
        "Percpu frees since boot, from the kernel's percpu_stats (nr_dealloc).",
        lambda s: s.globals.nr_dealloc,
    ),
    (
        "pcpu_stats_live_allocations",
        False,
        "Percpu allocations live now, all callers since boot (nr_cur_alloc); "
        "a steady climb is a leak candidate.",
        lambda s: s.globals.nr_cur_alloc,
    ),
    (
        "pcpu_stats_max_live_allocations",
        False,
        "Highest number of simultaneously live percpu allocations since boot (nr_max_alloc).",
        lambda s: s.globals.nr_max_alloc,
    ),
    (
        "pcpu_stats_chunks",
        False,
        "Percpu chunks now (nr_chunks); each costs a unit per possible CPU.",
        lambda s: s.globals.nr_chunks,
    ),
    (
        "pcpu_stats_max_chunks",
        False,
        "Most percpu chunks ever present at once since boot (nr_max_chunks).",
        lambda s: s.globals.nr_max_chunks,
    ),
    (
        "pcpu_stats_min_allocation_size_bytes",
        False,
        "Smallest percpu request size since boot (min_alloc_size).",
        lambda s: s.globals.min_alloc_size,
    ),
    (
        "pcpu_stats_max_allocation_size_bytes",
        False,
        "Largest percpu request size since boot (max_alloc_size).",
        lambda s: s.globals.max_alloc_size,
    ),
    (
        "pcpu_stats_empty_populated_pages",
        False,
        "Populated but unused percpu pages (empty_pop_pages); the kernel keeps a few for "
        "atomic allocations and reclaims the excess in its balance work.",
        lambda s: s.globals.empty_pop_pages,
    ),
    (
        "pcpu_stats_free_bytes",
        False,
        "Free bytes summed over all chunks, per unit (one CPU's copy).",
        ps.free_bytes,
    ),
    (
        "pcpu_stats_fragmented_bytes",
        False,
        "Free bytes stranded between allocations, summed over chunks (sum_frag); high values "
        "with many chunks mean fragmentation, not demand.",
        ps.fragmented_bytes,
    ),
    (
        "pcpu_stats_max_fragment_bytes",
        False,
        "Largest stranded free fragment of any chunk (max_frag).",
        ps.max_fragment_bytes,
    ),
    (
        "pcpu_stats_contig_free_bytes",
        False,
        "Largest contiguous free area of any chunk (contig_bytes, a kernel hint); a request "
        "larger than this needs a new chunk.",
        ps.max_contig_bytes,
    ),
    (
        "pcpu_stats_unit_size_bytes",
        False,
        "Size of one CPU's unit in every chunk (boot-time geometry).",
        lambda s: s.info.unit_size,
    ),
    (
        "pcpu_stats_static_size_bytes",
        False,
        "Static percpu variables of the kernel and modules (boot-time geometry).",
        lambda s: s.info.static_size,
    ),
    (
        "pcpu_stats_reserved_size_bytes",
        False,
        "Reserved area for module static percpu variables (boot-time geometry).",
        lambda s: s.info.reserved_size,
    ),
    (
        "pcpu_stats_dynamic_size_bytes",
        False,
        "Dynamic area of the first chunk (boot-time geometry).",
        lambda s: s.info.dyn_size,
    ),
    (
        "pcpu_stats_atom_size_bytes",
        False,
        "Allocation atom size of the first chunk (boot-time geometry).",
        lambda s: s.info.atom_size,
    ),
    (
        "pcpu_stats_alloc_size_bytes",
        False,
        "Size of each first-chunk allocation (boot-time geometry).",
        lambda s: s.info.alloc_size,
    ),
)

MEMINFO_NAME = "pcpu_meminfo_bytes"
MEMINFO_HELP = (
    "Memory used by the percpu allocator on all CPUs (the Percpu: line of /proc/meminfo); "
    "compare with pcpu_live_bytes to see how much tracing explains."
)


def _new(name: str, counter: bool, doc: str) -> CounterMetricFamily | GaugeMetricFamily:
    if counter:
        return CounterMetricFamily(name, doc)
    return GaugeMetricFamily(name, doc)


def describe_kernel_stats() -> list[Metric]:
    """Empty families for every name this module can export."""
    out: list[Metric] = [_new(n, counter, doc) for n, counter, doc, _ in PERCPU_STATS_FAMILIES]
    out.append(GaugeMetricFamily(MEMINFO_NAME, MEMINFO_HELP))
    return out


def percpu_stats_families(stats: PercpuStats) -> list[Metric]:
    """One unlabelled family per percpu_stats metric."""
    out: list[Metric] = []
    for name, counter, doc, value in PERCPU_STATS_FAMILIES:
        family = _new(name, counter, doc)
        family.add_metric([], value(stats))
        out.append(family)
    return out


def meminfo_families(percpu_bytes: int) -> list[Metric]:
    """The meminfo Percpu family."""
    return [GaugeMetricFamily(MEMINFO_NAME, MEMINFO_HELP, value=percpu_bytes)]
