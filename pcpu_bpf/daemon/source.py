"""What scrapes read: one Snapshot shared by every scrape of a short window.

Kernel-side reads are paid for once per window whatever the number of scrapers: the
Backend is asked for a Snapshot at most once per `window` seconds (and one at a time),
and the kernel's own statistics inside it come through a `SharedRead` of their own,
refreshed at most once per --min-read-interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.daemon.shared_read import SharedRead
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.snapshot import Snapshot

# Scrapes this close together share one Snapshot: a burst of scrapers costs one read,
# while one scraper polling every second (pcpu-top --from) still sees every second.
SNAPSHOT_WINDOW = 0.5

KERNEL_STATS_AGE = "pcpu_kernel_stats_age_seconds"
KERNEL_STATS_AGE_HELP = (
    "Seconds since the kernel statistics served (pcpu_stats_*, pcpu_meminfo_bytes) were read. "
    "Reading debugfs percpu_stats holds the allocator's lock, so the daemon reads them at "
    "most once per --min-read-interval, however many scrape it."
)


class ScrapeSource:
    """The Backend behind one shared read; also what the watchdog probes."""

    def __init__(
        self,
        backend: Backend,
        *,
        window: float = SNAPSHOT_WINDOW,
        kernel_reads: SharedRead[KernelStats | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.kernel_reads = kernel_reads
        self._clock = clock
        self.snapshots: SharedRead[tuple[Snapshot, float]] = SharedRead(
            self._take, window, clock=clock
        )

    def _take(self) -> tuple[Snapshot, float]:
        started = self._clock()
        snap = self.backend.snapshot()
        # Snapshots are taken one at a time, so the last kernel read is this one's.
        read_at = self.kernel_reads.last_started() if self.kernel_reads is not None else None
        return snap, started if read_at is None else read_at

    def snapshot(self) -> Snapshot:
        """The shared Snapshot (raises what the backend raised)."""
        return self.snapshots()[0]

    def kernel_stats_age(self) -> float | None:
        """Seconds since the served Snapshot's kernel stats were read; None without them."""
        snap, read_at = self.snapshots()
        if snap.kernel_stats is None:
            return None
        return max(0.0, self._clock() - read_at)

    def responsive(self, timeout: float) -> bool:
        """False when a snapshot has been under way for ``timeout`` seconds or more."""
        return self.snapshots.stuck_for() < timeout


class KernelStatsAgeCollector:
    """pcpu_kernel_stats_age_seconds, from the Snapshot the scrape is served."""

    def __init__(self, source: ScrapeSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        """The one family, empty (no snapshot is taken)."""
        return [GaugeMetricFamily(KERNEL_STATS_AGE, KERNEL_STATS_AGE_HELP)]

    def collect(self) -> Iterable[Metric]:
        """The age, or nothing when there are no kernel stats (or no snapshot)."""
        try:
            age = self._source.kernel_stats_age()
        except Exception:  # the pcpu collector reports a failed snapshot; nothing to add
            return []
        if age is None:
            return []
        return [GaugeMetricFamily(KERNEL_STATS_AGE, KERNEL_STATS_AGE_HELP, value=round(age, 3))]
