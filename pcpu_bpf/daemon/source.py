"""What scrapes read: one Snapshot shared by every scrape of a short window.

The Backend is asked for a Snapshot at most once per `window` seconds (and one at a
time), whatever the number of scrapers; the live backend's own reads of the kernel's
statistics are throttled further, at most once per --min-read-interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.kernel.shared_read import SharedRead
from pcpu_bpf.model.snapshot import Snapshot

# Scrapes this close together share one Snapshot: a burst of scrapers costs one read,
# while one scraper polling every second (pcpu-top --from) still sees every second.
SNAPSHOT_WINDOW = 0.5


class ScrapeSource:
    """The Backend behind one shared read; also what the watchdog probes."""

    def __init__(
        self,
        backend: Backend,
        *,
        window: float = SNAPSHOT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.snapshots: SharedRead[Snapshot] = SharedRead(backend.snapshot, window, clock=clock)

    def snapshot(self) -> Snapshot:
        """The shared Snapshot (raises what the backend raised)."""
        return self.snapshots()

    def responsive(self, timeout: float) -> bool:
        """False when a snapshot has been under way for ``timeout`` seconds or more."""
        return self.snapshots.stuck_for() < timeout
