"""A scenario running on the simulated allocator, with the reference aggregator listening."""

from __future__ import annotations

import random

from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats, render_percpu_stats
from pcpu_bpf.model.aggregation import Aggregator
from pcpu_bpf.model.events import ALL_FIELDS, GFP_ATOMIC, GFP_KERNEL, Event
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.layout import DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.model.symbolizer import Symbolizer
from pcpu_bpf.model.tables import (
    SnapshotContext,
    map_usage,
)
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.geometry import CONFIG_L, Geometry
from pcpu_bpf.sim.request import REQUEST_CALL_SITE, RequestOutcome
from pcpu_bpf.sim.scenarios import SYMBOLS, Workload, get_scenario

# The simulator emits the 6.18 events, so every field is there.
SIM_FIELDS = dict.fromkeys(ALL_FIELDS, True)
SIM_KERNEL = "simulated-6.18"
# Workload steps per simulated second: the sim backend's pace, and the clock of
# `pcpu-bpf simulate`'s Snapshot.
OPS_PER_SECOND = 2000.0


class Simulation:
    """Deterministic for a given (scenario, seed, geometry): steps, events, Snapshots."""

    def __init__(
        self,
        scenario: str = "steady",
        seed: int = 0,
        *,
        geometry: Geometry = CONFIG_L,
        balance: str | None = None,
        live_capacity: int = DEFAULT_LIVE_CAPACITY,
        site_capacity: int = DEFAULT_SITE_CAPACITY,
    ) -> None:
        self.scenario = get_scenario(scenario)
        self.seed = seed
        self.geometry = geometry
        self.live_capacity = live_capacity
        self.site_capacity = site_capacity
        self.symbolizer = Symbolizer.from_symbols(SYMBOLS)
        self.aggregator = Aggregator(
            self.symbolizer.resolve,
            possible_cpus=geometry.nr_possible_cpus,
            live_capacity=live_capacity,
            site_capacity=site_capacity,
        )
        self.events = 0
        self.allocator = Allocator(
            geometry, balance=balance or self.scenario.balance, sink=self._on_event
        )
        self._steps = self.scenario.run(Workload(self.allocator, random.Random(seed)))
        self.ops = 0

    def _on_event(self, event: Event) -> None:
        self.events += 1
        self.aggregator.apply(event)

    def advance(self, ops: int) -> None:
        """Run `ops` more workload steps (each one allocation or free)."""
        for _ in range(ops):
            next(self._steps)
        self.ops += ops

    def request(self, size: int, align: int, atomic: bool = False) -> RequestOutcome:
        """Make one allocation outside the scenario, from REQUEST_CALL_SITE, and say how
        it went; it stays allocated."""
        alloc = self.allocator
        gfp = GFP_ATOMIC if atomic else GFP_KERNEL
        ptr = alloc.alloc(size, align, gfp=gfp, call_site=REQUEST_CALL_SITE)
        return RequestOutcome(ptr, alloc.last_rejection)

    def percpu_stats_text(self) -> str:
        """The simulated debugfs percpu_stats, in the kernel's exact format."""
        return render_percpu_stats(self.allocator.percpu_stats())

    def kernel_stats(self, timestamp: float | None = None) -> KernelStats:
        """Kernel stats as the live backend gets them: the rendered text goes through the
        same parser as the real file."""
        return KernelStats(
            percpu_stats=parse_percpu_stats(self.percpu_stats_text()),
            meminfo_percpu_bytes=self.allocator.meminfo_percpu_kb() * 1024,
            read_at=timestamp,
        )

    def snapshot(self, timestamp: float) -> Snapshot:
        """The Snapshot a live backend would give for the same events."""
        tables = self.aggregator.tables
        ctx = SnapshotContext(
            backend="sim",
            kernel=SIM_KERNEL,
            timestamp=timestamp,
            kernel_stats=self.kernel_stats(timestamp),
            fields_available=SIM_FIELDS,
            maps=map_usage(tables, self.live_capacity, self.site_capacity),
        )
        return self.aggregator.snapshot(ctx)
