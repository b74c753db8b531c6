"""PcpuCollector: a prometheus-client custom collector that turns one Snapshot into metrics.

Every collect() takes exactly one Snapshot and builds fresh families from it; nothing is
mirrored into long-lived Counter objects (the Snapshot already holds the truth). A part
that fails is counted in pcpu_collector_errors_total, marked 0 in pcpu_collector_success
and logged, and the rest is still served: collect() never raises, unlike a bare
registry collector, where one bad read turns all of /metrics into an error.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from pcpu_bpf import __version__
from pcpu_bpf.model.events import ALL_FIELDS
from pcpu_bpf.model.layout import DROP_REASONS
from pcpu_bpf.model.snapshot import SizeHistogram, Snapshot

from .kernel_stats import (
    describe_kernel_stats,
    meminfo_families,
    percpu_stats_families,
)

log = logging.getLogger(__name__)

# Parts of a scrape that succeed or fail on their own. "snapshot" is the backend read
# itself; when it fails nothing else can be served but the exporter's own metrics.
COLLECTORS = ("snapshot", "tracing", "percpu_stats", "meminfo")

# (type, help, label names) per family, in exposition order.
_C, _G, _H = "counter", "gauge", "histogram"
CATALOG: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pcpu_exporter_info": (
        _G,
        "Always 1; labels name the exporter version, the backend "
        "(bpf = live kernel, sim = simulated data) and the kernel release.",
        ("version", "backend", "kernel"),
    ),
    "pcpu_collector_success": (
        _G,
        "1 if this part of the metrics was served by the "
        "last scrape, 0 if it failed (see the daemon's log) or could not be served.",
        ("collector",),
    ),
    "pcpu_collector_errors_total": (
        _C,
        "Scrapes in which this part failed; the rest "
        "of the metrics was still served. The daemon's log says why.",
        ("collector",),
    ),
    "pcpu_allocations_total": (
        _C,
        "Percpu allocations since the exporter started, by "
        "kernel function that asked (call_site), atomic (no sleeping) and reserved-chunk "
        "use.",
        ("call_site", "atomic", "reserved"),
    ),
    "pcpu_allocated_bytes_total": (
        _C,
        "Bytes really used by percpu allocations since "
        "the exporter started: all CPUs' copies plus memcg overhead.",
        ("call_site",),
    ),
    "pcpu_requested_bytes_total": (
        _C,
        "Bytes requested by percpu allocations since the "
        "exporter started (one CPU's copy, as the caller asked).",
        ("call_site",),
    ),
    "pcpu_frees_total": (
        _C,
        "Percpu frees since the exporter started, by call site of "
        'the allocation; call_site="untracked" counts frees of allocations that were not '
        "tracked (made before tracing began, or dropped by a full table).",
        ("call_site",),
    ),
    "pcpu_freed_bytes_total": (
        _C,
        "Bytes (all CPUs) returned by frees of tracked allocations since the exporter started.",
        ("call_site",),
    ),
    "pcpu_live_allocations": (
        _G,
        "Percpu allocations made since the exporter started "
        "and not freed yet; a call site that only grows is a leak suspect.",
        ("call_site",),
    ),
    "pcpu_live_bytes": (
        _G,
        "Bytes (all CPUs) held by live tracked allocations; "
        "allocated minus freed, exactly, unless tracking dropped some (see "
        "pcpu_tracking_dropped_total).",
        ("call_site",),
    ),
    "pcpu_allocation_size_bytes": (
        _H,
        "Requested size of percpu allocations since the exporter started (log2 buckets).",
        (),
    ),
    "pcpu_allocation_failures_total": (
        _C,
        "Percpu allocations that failed since the "
        "exporter started; atomic failures mean the atomic reserve ran dry, others mean "
        "no memory or no address space for a new chunk.",
        ("atomic", "reserved"),
    ),
    "pcpu_failed_allocation_size_bytes": (
        _H,
        "Requested size of failed percpu allocations since the exporter started (log2 buckets).",
        (),
    ),
    "pcpu_chunk_creations_total": (
        _C,
        "Percpu chunks created since the exporter "
        "started; steady creation and destruction is chunk churn.",
        (),
    ),
    "pcpu_chunk_destructions_total": (
        _C,
        "Percpu chunks destroyed since the exporter started.",
        (),
    ),
    "pcpu_tracepoint_field_available": (
        _G,
        "1 if this kernel's percpu tracepoint has "
        "the field, 0 if not (call_site and bytes_alloc need Linux 5.19 or later).",
        ("event", "field"),
    ),
    "pcpu_tracking_dropped_total": (
        _C,
        "Allocations not tracked because a table was "
        "full; raise --live-capacity or --site-capacity if this grows.",
        ("reason",),
    ),
    "pcpu_bpf_program_runs_total": (
        _C,
        "Runs of each BPF program (needs sysctl kernel.bpf_stats_enabled=1).",
        ("program",),
    ),
    "pcpu_bpf_program_run_seconds_total": (
        _C,
        "CPU time spent in each BPF program (needs sysctl kernel.bpf_stats_enabled=1).",
        ("program",),
    ),
    "pcpu_bpf_program_recursion_misses_total": (
        _C,
        "Events the kernel did not deliver "
        "to the program because another BPF program was running; those events are "
        "missing from the counters.",
        ("program",),
    ),
    "pcpu_bpf_map_entries": (_G, "Entries in each BPF map now.", ("map",)),
    "pcpu_bpf_map_capacity": (
        _G,
        "Capacity of each BPF map; entries at capacity means drops (pcpu_tracking_dropped_total).",
        ("map",),
    ),
}


# The exporter's own families, served even when the snapshot fails.
_SELF = ("pcpu_exporter_info", "pcpu_collector_success", "pcpu_collector_errors_total")


_Scalar = CounterMetricFamily | GaugeMetricFamily


def _scalar(name: str) -> _Scalar:
    kind, doc, labels = CATALOG[name]
    if kind == _C:
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def _family(name: str) -> Metric:
    if CATALOG[name][0] == _H:
        return HistogramMetricFamily(name, CATALOG[name][1])
    return _scalar(name)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _histogram(name: str, hist: SizeHistogram) -> Metric:
    family = HistogramMetricFamily(name, CATALOG[name][1])
    # The le spelling client_python's own Histogram uses: "4.0", ..., "+Inf".
    buckets = [("+Inf" if math.isinf(le) else str(le), float(n)) for le, n in hist.cumulative()]
    family.add_metric([], buckets, sum_value=hist.sum)
    return family


def _known_fields(snap: Snapshot) -> dict[tuple[str, str], bool]:
    """Every field of every event known in advance (0 until seen), plus the Snapshot's."""
    return {**dict.fromkeys(ALL_FIELDS, False), **(snap.fields_available or {})}


def tracing_families(snap: Snapshot) -> list[Metric]:
    """Families from the tracing counters and the tracer's own state."""
    fams = {n: _scalar(n) for n, spec in CATALOG.items() if n not in _SELF and spec[0] != _H}
    for key in sorted(snap.allocations):
        fams["pcpu_allocations_total"].add_metric(
            [key.call_site, _bool(key.atomic), _bool(key.reserved)],
            snap.allocations[key].allocations,
        )
    by_site = snap.allocations_by_site()
    for site in snap.site_names():
        alloc, live = by_site.get(site), snap.sites.get(site)
        values = {
            "pcpu_allocated_bytes_total": alloc.allocated_bytes if alloc else 0,
            "pcpu_requested_bytes_total": alloc.requested_bytes if alloc else 0,
            "pcpu_frees_total": live.frees if live else 0,
            "pcpu_freed_bytes_total": live.freed_bytes if live else 0,
            "pcpu_live_allocations": live.live_allocations if live else 0,
            "pcpu_live_bytes": live.live_bytes if live else 0,
        }
        for name, value in values.items():
            fams[name].add_metric([site], value)
    for atomic in (False, True):
        for reserved in (False, True):
            fams["pcpu_allocation_failures_total"].add_metric(
                [_bool(atomic), _bool(reserved)], snap.failures.get((atomic, reserved), 0)
            )
    fams["pcpu_chunk_creations_total"].add_metric([], snap.chunk_creations)
    fams["pcpu_chunk_destructions_total"].add_metric([], snap.chunk_destructions)
    if snap.fields_available is not None:
        for (event, field), ok in sorted(_known_fields(snap).items()):
            fams["pcpu_tracepoint_field_available"].add_metric([event, field], int(ok))
    for reason in sorted(set(DROP_REASONS) | set(snap.dropped)):
        fams["pcpu_tracking_dropped_total"].add_metric([reason], snap.dropped.get(reason, 0))
    for prog, st in sorted((snap.programs or {}).items()):
        if st.runs is not None:
            fams["pcpu_bpf_program_runs_total"].add_metric([prog], st.runs)
        if st.run_time_ns is not None:
            fams["pcpu_bpf_program_run_seconds_total"].add_metric([prog], st.run_time_ns / 1e9)
        fams["pcpu_bpf_program_recursion_misses_total"].add_metric([prog], st.recursion_misses)
    for name, usage in sorted((snap.maps or {}).items()):
        fams["pcpu_bpf_map_entries"].add_metric([name], usage.entries)
        fams["pcpu_bpf_map_capacity"].add_metric([name], usage.capacity)
    histograms = {
        "pcpu_allocation_size_bytes": _histogram("pcpu_allocation_size_bytes", snap.size_histogram),
        "pcpu_failed_allocation_size_bytes": _histogram(
            "pcpu_failed_allocation_size_bytes", snap.failed_size_histogram
        ),
    }
    out = [histograms.get(n) or fams.get(n) for n in CATALOG]
    # Parts a backend does not have (the simulator runs no BPF programs): omit, don't
    # fake zeros.
    return [f for f in out if f is not None and f.samples]


class PcpuCollector:
    """Collector for the whole pcpu_ metric catalog, from one Snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, version: str = __version__) -> None:
        self._snapshot = snapshot
        self._version = version
        self._lock = threading.Lock()  # scrapes may run concurrently (threaded server)
        self._errors = dict.fromkeys(COLLECTORS, 0)
        self._failing: dict[str, str] = {}  # part -> reason last logged
        self._seen: set[str] = {"snapshot", "tracing"}
        self._info = ("unknown", "unknown")  # (backend, kernel) of the last good snapshot

    def describe(self) -> Iterable[Metric]:
        """Empty families naming everything collect() may yield (no snapshot is taken)."""
        return [_family(name) for name in CATALOG] + describe_kernel_stats()

    def collect(self) -> Iterable[Metric]:
        """Fresh families from one snapshot; never raises."""
        ok: dict[str, bool] = {}
        out: list[Metric] = []
        try:
            snap: Snapshot | None = self._snapshot()
        except Exception as exc:  # any backend failure only degrades the scrape
            snap = None
            self._fail("snapshot", f"{type(exc).__name__}: {exc}", ok)
        else:
            self._succeed("snapshot", ok)
        if snap is not None:
            self._info = (snap.backend, snap.kernel)
            self._part("tracing", lambda: tracing_families(snap), out, ok)
            ks = snap.kernel_stats
            if ks is not None:
                for part, reason in sorted(ks.errors.items()):
                    self._fail(part, reason, ok)
                if ks.percpu_stats is not None and "percpu_stats" not in ok:
                    stats = ks.percpu_stats
                    self._part("percpu_stats", lambda: percpu_stats_families(stats), out, ok)
                if ks.meminfo_percpu_bytes is not None and "meminfo" not in ok:
                    nbytes = ks.meminfo_percpu_bytes
                    self._part("meminfo", lambda: meminfo_families(nbytes), out, ok)
        return self._self_families(ok) + out

    def _part(
        self,
        part: str,
        build: Callable[[], list[Metric]],
        out: list[Metric],
        ok: dict[str, bool],
    ) -> None:
        try:
            families = build()
        except Exception as exc:  # a bug or bad data spoils one part only
            log.debug("collector %s failed", part, exc_info=True)
            self._fail(part, f"{type(exc).__name__}: {exc}", ok)
        else:
            out.extend(families)
            self._succeed(part, ok)

    def _succeed(self, part: str, ok: dict[str, bool]) -> None:
        ok[part] = True
        with self._lock:
            self._seen.add(part)
            if self._failing.pop(part, None) is not None:
                log.info("collector %s recovered", part)

    def _fail(self, part: str, reason: str, ok: dict[str, bool]) -> None:
        ok[part] = False
        with self._lock:
            self._seen.add(part)
            self._errors[part] = self._errors.get(part, 0) + 1
            # Log on a change only: a part that stays broken must not flood the journal.
            if self._failing.get(part) != reason:
                log.warning("collector %s failed, rest of /metrics served: %s", part, reason)
                self._failing[part] = reason

    def _self_families(self, ok: dict[str, bool]) -> list[Metric]:
        info = _scalar("pcpu_exporter_info")
        info.add_metric([self._version, *self._info], 1)
        success = _scalar("pcpu_collector_success")
        errors = _scalar("pcpu_collector_errors_total")
        with self._lock:
            # A part seen before but not served now (the snapshot failed) reads 0, no gap.
            for part in sorted(self._seen | set(ok)):
                success.add_metric([part], int(ok.get(part, False)))
            for part, n in sorted(self._errors.items()):
                errors.add_metric([part], n)
        return [info, success, errors]
