"""PcpuCollector: a prometheus-client custom collector that turns one Snapshot into metrics.

Every collect() takes exactly one Snapshot and builds fresh families from it; nothing is
mirrored into long-lived Counter objects (the Snapshot already holds the truth). A part
that fails is counted in pcpu_collector_errors_total, marked 0 in pcpu_collector_success
and logged, and the rest is still served: collect() never raises, unlike a bare
registry collector, where one bad read turns all of /metrics into an error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from exporters.catalog import (
    BPF_MAPS,
    BY_NAME,
    CATALOG,
    CGROUPS,
    COLLECTORS,
    COUNTER,
    HISTOGRAM,
    MEMINFO,
    PERCPU_STATS,
    SNAPSHOT,
    TRACING,
    Family,
    Histogram,
    families_of,
)
from pcpu_bpf import __version__
from pcpu_bpf.model.breakdown import BOUND_SUBJECTS, violation_subject
from pcpu_bpf.model.snapshot import Snapshot

log = logging.getLogger(__name__)


def _empty(family: Family) -> Metric:
    if family.kind == HISTOGRAM:
        return HistogramMetricFamily(family.name, family.help)
    if family.kind == COUNTER:
        return CounterMetricFamily(family.name, family.help, labels=family.labels)
    return GaugeMetricFamily(family.name, family.help, labels=family.labels)


def build_family(family: Family, snap: Snapshot) -> Metric:
    """One family with its samples from ``snap`` (possibly none)."""
    metric = _empty(family)
    if isinstance(family.binding, Histogram):
        buckets, total = family.binding.buckets(snap)
        assert isinstance(metric, HistogramMetricFamily)
        metric.add_metric([], buckets, sum_value=total)
        return metric
    assert isinstance(metric, CounterMetricFamily | GaugeMetricFamily)
    for labels, value in family.binding.samples(snap):
        metric.add_metric(list(labels), value)
    return metric


def part_families(part: str, snap: Snapshot) -> list[Metric]:
    """The families of one collector part; a family with no samples is left out (the
    simulator runs no BPF programs: nothing is faked)."""
    built = (build_family(f, snap) for f in families_of(part))
    return [m for m in built if m.samples]


class PcpuCollector:
    """Collector for the whole pcpu_ metric catalog, from one Snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, version: str = __version__) -> None:
        self._snapshot = snapshot
        self._version = version
        self._lock = threading.Lock()  # scrapes may run concurrently (threaded server)
        self._errors = dict.fromkeys(COLLECTORS, 0)
        self._failing: dict[str, str] = {}  # part -> reason last logged
        self._seen: set[str] = {SNAPSHOT, TRACING}
        self._info = ("unknown", "unknown")  # (backend, kernel) of the last good snapshot
        # Bound violations of the breakdown: scrapes by part and whether the read was
        # settled, and the text last logged by part.
        self._violations = {(p, s): 0 for p in BOUND_SUBJECTS for s in (True, False)}
        self._violating: dict[str, str] = {}

    def describe(self) -> Iterable[Metric]:
        """Empty families naming everything collect() may yield (no snapshot is taken)."""
        return [_empty(f) for f in CATALOG]

    def collect(self) -> Iterable[Metric]:
        """Fresh families from one snapshot; never raises."""
        ok: dict[str, bool] = {}
        out: list[Metric] = []
        try:
            snap: Snapshot | None = self._snapshot()
        except Exception as exc:  # any backend failure only degrades the scrape
            snap = None
            self._fail(SNAPSHOT, f"{type(exc).__name__}: {exc}", ok)
        else:
            self._succeed(SNAPSHOT, ok)
        if snap is not None:
            self._info = (snap.backend, snap.kernel)
            out.extend(part_families(SNAPSHOT, snap))
            self._part(TRACING, snap, out, ok)
            ks = snap.kernel_stats
            if ks is not None:
                for part, reason in sorted(ks.errors.items()):
                    self._fail(part, reason, ok)
                if ks.percpu_stats is not None and PERCPU_STATS not in ok:
                    self._part(PERCPU_STATS, snap, out, ok)
                if ks.meminfo_percpu_bytes is not None and MEMINFO not in ok:
                    self._part(MEMINFO, snap, out, ok)
                if ks.bpf_maps is not None and BPF_MAPS not in ok:
                    self._part(BPF_MAPS, snap, out, ok)
                if ks.cgroups is not None and CGROUPS not in ok:
                    self._part(CGROUPS, snap, out, ok)
            self._check_bounds(snap)
        return self._self_families(ok) + out

    def _check_bounds(self, snap: Snapshot) -> None:
        """Count the breakdown's violated bounds, logging a part when its reason changes."""
        broken: dict[str, str] = {}
        settled = True
        if snap.breakdown is not None:
            settled = snap.breakdown.settled
            for violation in snap.breakdown.violations:
                broken.setdefault(violation_subject(violation), violation)
        # A read the kernel moved under (heavy churn) may break a bound by the skew alone:
        # counted apart, and not a warning.
        level = logging.WARNING if settled else logging.INFO
        with self._lock:
            for part, violation in broken.items():
                key = (part, settled)
                self._violations[key] = self._violations.get(key, 0) + 1
                if self._violating.get(part) != violation:
                    log.log(level, "breakdown bound broken, parts served unclipped: %s", violation)
                    self._violating[part] = violation
            for part in [p for p in self._violating if p not in broken]:
                del self._violating[part]
                log.info("breakdown bound of %s holds again", part)

    def _part(self, part: str, snap: Snapshot, out: list[Metric], ok: dict[str, bool]) -> None:
        try:
            families = part_families(part, snap)
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
        info = _empty(BY_NAME["pcpu_exporter_info"])
        success = _empty(BY_NAME["pcpu_collector_success"])
        errors = _empty(BY_NAME["pcpu_collector_errors_total"])
        violations = _empty(BY_NAME["pcpu_memory_bound_violations_total"])
        assert isinstance(info, GaugeMetricFamily) and isinstance(success, GaugeMetricFamily)
        assert isinstance(errors, CounterMetricFamily)
        assert isinstance(violations, CounterMetricFamily)
        info.add_metric([self._version, *self._info], 1)
        with self._lock:
            # A part seen before but not served now (the snapshot failed) reads 0, no gap.
            for part in sorted(self._seen | set(ok)):
                success.add_metric([part], int(ok.get(part, False)))
            for part, n in sorted(self._errors.items()):
                errors.add_metric([part], n)
            for (part, settled), n in sorted(self._violations.items()):
                violations.add_metric([part, str(settled).lower()], n)
        return [info, success, errors, violations]
