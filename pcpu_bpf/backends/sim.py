"""The simulator backend: a scenario on the simulated allocator, advancing with a clock."""

from __future__ import annotations

import time
from collections.abc import Callable

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.model.layout import DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.sim.simulation import OPS_PER_SECOND, Simulation


class SimBackend(Backend):
    """Snapshots of a simulated workload that keeps running as the clock moves.

    Each `snapshot()` first runs the workload up to `ops_per_second` x elapsed seconds,
    so numbers move like a live host's. Timestamps are simulated time (operations done /
    ops_per_second), so a fake clock, or `advance()`, makes everything deterministic.
    After a long gap (no scrape for an hour) at most `MAX_CATCH_UP_SECONDS` of work is
    done and the rest of the gap is skipped, so a scrape never waits for minutes.
    """

    MAX_CATCH_UP_SECONDS = 10.0

    name = "sim"

    def __init__(
        self,
        scenario: str = "steady",
        seed: int = 0,
        *,
        ops_per_second: float = OPS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
        live_capacity: int = DEFAULT_LIVE_CAPACITY,
        site_capacity: int = DEFAULT_SITE_CAPACITY,
        min_age: float | None = None,
    ) -> None:
        # A simulated host has booted and started the profiler before tracing begins.
        self.simulation = Simulation(
            scenario,
            seed,
            live_capacity=live_capacity,
            site_capacity=site_capacity,
            before_tracing=True,
            ops_per_second=ops_per_second,
            min_age=min_age,
        )
        self.ops_per_second = ops_per_second
        self._clock = clock
        self._start = clock()

    @property
    def label(self) -> str:
        return f"sim ({self.simulation.scenario.name})"

    def started_at(self) -> float:
        """Simulated time 0: the counters begin with the backend."""
        return 0.0

    def advance(self, ops: int) -> None:
        """Run `ops` workload steps now, independent of the clock."""
        self.simulation.advance(ops)

    def snapshot(self) -> Snapshot:
        due = int((self._clock() - self._start) * self.ops_per_second)
        cap = int(self.MAX_CATCH_UP_SECONDS * self.ops_per_second)
        if due - self.simulation.ops > cap:
            # Skip the rest of the gap: the clock's origin moves, simulated time does not.
            self._start += (due - self.simulation.ops - cap) / self.ops_per_second
            due = self.simulation.ops + cap
        if due > self.simulation.ops:
            self.simulation.advance(due - self.simulation.ops)
        return self.simulation.snapshot(self.simulation.now())
