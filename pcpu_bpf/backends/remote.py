"""Read a running daemon's /metrics back into a Snapshot: the inverse of the metric catalog.

`pcpu-top --from URL` uses it, so a table can show what `pcpu-bpf serve` has counted since
it started without loading a second set of BPF programs. Two parts of a Snapshot do not
survive the trip: the byte counters are exported per call site only (not per
atomic/reserved), so they land on one key of the site, and percpu_stats is exported as
sums over chunks, so the rebuilt `PercpuStats` has no chunk list.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.kernel.percpu_stats import AllocationInfo, GlobalStats, PercpuStats
from pcpu_bpf.model.layout import NR_SIZE_SLOTS, SIZE_BUCKETS
from pcpu_bpf.model.snapshot import (
    AllocCounts,
    AllocKey,
    KernelStats,
    MapUsage,
    ProgramStats,
    SiteCounts,
    SizeHistogram,
    Snapshot,
)

DEFAULT_URL = "http://127.0.0.1:9717/metrics"
# Ask for the classic text format: the parser below reads it, not OpenMetrics.
_ACCEPT = "text/plain; version=0.0.4"

# percpu_stats fields by the metric that carries them (DESIGN.md metric catalog).
_GLOBAL_METRICS = {
    "nr_alloc": "pcpu_stats_allocations_total",
    "nr_dealloc": "pcpu_stats_frees_total",
    "nr_cur_alloc": "pcpu_stats_live_allocations",
    "nr_max_alloc": "pcpu_stats_max_live_allocations",
    "nr_chunks": "pcpu_stats_chunks",
    "nr_max_chunks": "pcpu_stats_max_chunks",
    "min_alloc_size": "pcpu_stats_min_allocation_size_bytes",
    "max_alloc_size": "pcpu_stats_max_allocation_size_bytes",
    "empty_pop_pages": "pcpu_stats_empty_populated_pages",
}
_INFO_METRICS = {
    "unit_size": "pcpu_stats_unit_size_bytes",
    "static_size": "pcpu_stats_static_size_bytes",
    "reserved_size": "pcpu_stats_reserved_size_bytes",
    "dyn_size": "pcpu_stats_dynamic_size_bytes",
    "atom_size": "pcpu_stats_atom_size_bytes",
    "alloc_size": "pcpu_stats_alloc_size_bytes",
}

Labels = dict[str, str]
Samples = dict[str, list[tuple[Labels, float]]]


def normalize_url(url: str) -> str:
    """Accept "host:port", "http://host:port" or a full URL; default the path to /metrics."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: "host:port" must be a number
    except ValueError as exc:
        raise PcpuError(f"--from: not a valid URL: {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PcpuError(f"--from: not an http URL: {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def fetch_metrics(url: str, timeout: float = 5.0) -> str:
    """GET ``url`` and return the exposition text; any failure is a one-line PcpuError."""
    request = urllib.request.Request(url, headers={"Accept": _ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response, and with it the socket
        raise PcpuError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise PcpuError(
            f"cannot reach {url}: {exc.reason} (is `pcpu-bpf serve` running there?)"
        ) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # timeouts, resets, malformed responses
        raise PcpuError(f"cannot read {url}: {exc}") from exc
    return body.decode("utf-8", errors="replace")


def _samples(text: str) -> Samples:
    # Counters come back as family "x" with sample "x_total"; index by sample name only.
    out: Samples = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name].append((dict(sample.labels), float(sample.value)))
    except ValueError as exc:
        raise PcpuError(f"not a Prometheus exposition: {exc}") from exc
    return out


def _int(value: float) -> int:
    return int(round(value)) if math.isfinite(value) else 0


def _one(samples: Samples, name: str) -> int | None:
    found = samples.get(name)
    return _int(found[0][1]) if found else None


def _by_label(samples: Samples, name: str, label: str) -> dict[str, int]:
    return {labels.get(label, ""): _int(v) for labels, v in samples.get(name, [])}


def _histogram(samples: Samples, name: str) -> SizeHistogram:
    cumulative: dict[float, int] = {}
    for labels, value in samples.get(name + "_bucket", []):
        cumulative[float(labels["le"])] = _int(value)
    if not cumulative:
        return SizeHistogram()
    bounds = [float(b) for b in SIZE_BUCKETS] + [math.inf]
    if sorted(cumulative) != bounds:
        raise PcpuError(f"{name}: unexpected buckets {sorted(cumulative)}; different version?")
    running = [cumulative[b] for b in bounds]
    counts = tuple(n - (running[i - 1] if i else 0) for i, n in enumerate(running))
    assert len(counts) == NR_SIZE_SLOTS
    return SizeHistogram(counts, _one(samples, name + "_sum") or 0)


def _true(value: str) -> bool:
    return value == "true"


def _allocations(samples: Samples) -> dict[AllocKey, AllocCounts]:
    counts: dict[AllocKey, int] = {}
    for labels, value in samples.get("pcpu_allocations_total", []):
        key = AllocKey(labels["call_site"], _true(labels["atomic"]), _true(labels["reserved"]))
        counts[key] = _int(value)
    requested = _by_label(samples, "pcpu_requested_bytes_total", "call_site")
    allocated = _by_label(samples, "pcpu_allocated_bytes_total", "call_site")
    out: dict[AllocKey, AllocCounts] = {}
    seen: set[str] = set()
    # Bytes are per site only: put them on the site's first key, so per-site sums are exact.
    for key in sorted(counts):
        first = key.call_site not in seen
        seen.add(key.call_site)
        out[key] = AllocCounts(
            counts[key],
            requested.get(key.call_site, 0) if first else 0,
            allocated.get(key.call_site, 0) if first else 0,
        )
    return out


def _sites(samples: Samples) -> dict[str, SiteCounts]:
    series = {
        f: _by_label(samples, metric, "call_site")
        for f, metric in (
            ("frees", "pcpu_frees_total"),
            ("freed_bytes", "pcpu_freed_bytes_total"),
            ("live_allocations", "pcpu_live_allocations"),
            ("live_bytes", "pcpu_live_bytes"),
        )
    }
    names = sorted(set().union(*series.values()))
    return {
        name: SiteCounts(**{f: values.get(name, 0) for f, values in series.items()})
        for name in names
    }


def _present(samples: Samples, metrics: dict[str, str]) -> dict[str, int]:
    found = {f: _one(samples, m) for f, m in metrics.items()}
    return {f: v for f, v in found.items() if v is not None}


def _kernel_stats(samples: Samples) -> KernelStats:
    errors = {
        collector: "failed in the daemon"
        for collector, ok in _by_label(samples, "pcpu_collector_success", "collector").items()
        if not ok
    }
    info = _present(samples, _INFO_METRICS)
    glob = _present(samples, _GLOBAL_METRICS)
    stats = None
    # All or nothing: a kernel without CONFIG_PERCPU_STATS exports none of these.
    if len(info) == len(_INFO_METRICS) and len(glob) == len(_GLOBAL_METRICS):
        stats = PercpuStats(AllocationInfo(**info), GlobalStats(**glob), chunks=())
    return KernelStats(stats, _one(samples, "pcpu_meminfo_bytes"), errors)


def _programs(samples: Samples) -> dict[str, ProgramStats] | None:
    misses = _by_label(samples, "pcpu_bpf_program_recursion_misses_total", "program")
    if not misses:
        return None
    runs = _by_label(samples, "pcpu_bpf_program_runs_total", "program")
    seconds = {
        labels.get("program", ""): v
        for labels, v in samples.get("pcpu_bpf_program_run_seconds_total", [])
    }
    return {
        p: ProgramStats(
            runs.get(p),
            _int(seconds[p] * 1e9) if p in seconds else None,
            n,
        )
        for p, n in misses.items()
    }


def _maps(samples: Samples) -> dict[str, MapUsage] | None:
    entries = _by_label(samples, "pcpu_bpf_map_entries", "map")
    capacity = _by_label(samples, "pcpu_bpf_map_capacity", "map")
    if not entries:
        return None
    return {m: MapUsage(n, capacity.get(m, 0)) for m, n in entries.items()}


def parse_metrics(text: str, timestamp: float) -> Snapshot:
    """Turn a pcpu-bpf exposition back into a Snapshot taken at ``timestamp``."""
    try:
        return _parse(_samples(text), timestamp)
    except KeyError as exc:
        raise PcpuError(f"a pcpu metric lacks the label {exc}: another daemon version?") from None


def _parse(samples: Samples, timestamp: float) -> Snapshot:
    info = samples.get("pcpu_exporter_info")
    if not info:
        raise PcpuError("no pcpu_exporter_info in the exposition: not a pcpu-bpf daemon?")
    labels = info[0][0]
    failures = {
        (_true(lb.get("atomic", "")), _true(lb.get("reserved", ""))): _int(v)
        for lb, v in samples.get("pcpu_allocation_failures_total", [])
    }
    fields_available = {
        (lb.get("event", ""), lb.get("field", "")): bool(v)
        for lb, v in samples.get("pcpu_tracepoint_field_available", [])
    }
    return Snapshot(
        backend=labels.get("backend", "unknown"),
        kernel=labels.get("kernel", "unknown"),
        timestamp=timestamp,
        allocations=_allocations(samples),
        sites=_sites(samples),
        size_histogram=_histogram(samples, "pcpu_allocation_size_bytes"),
        failures=failures,
        failed_size_histogram=_histogram(samples, "pcpu_failed_allocation_size_bytes"),
        chunk_creations=_one(samples, "pcpu_chunk_creations_total") or 0,
        chunk_destructions=_one(samples, "pcpu_chunk_destructions_total") or 0,
        dropped=_by_label(samples, "pcpu_tracking_dropped_total", "reason"),
        kernel_stats=_kernel_stats(samples),
        fields_available=fields_available or None,
        programs=_programs(samples),
        maps=_maps(samples),
    )


class MetricsSource(Backend):
    """A Backend whose Snapshots are scrapes of a running daemon's /metrics."""

    name = "from"

    def __init__(
        self, url: str, *, clock: Callable[[], float] = time.monotonic, timeout: float = 5.0
    ) -> None:
        self.url = normalize_url(url)
        self.netloc = urllib.parse.urlsplit(self.url).netloc
        self._clock = clock
        self._timeout = timeout

    def snapshot(self) -> Snapshot:
        text = fetch_metrics(self.url, self._timeout)
        # The exposition carries no time of its own; the scrape's moment is the timestamp.
        return parse_metrics(text, self._clock())
