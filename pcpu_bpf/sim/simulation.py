"""A scenario running on the simulated allocator, with the reference aggregator listening."""

from __future__ import annotations

import dataclasses
import random

from pcpu_bpf.kernel.cgroups import UNIFIED
from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats, render_percpu_stats
from pcpu_bpf.model.ages import AgeFold
from pcpu_bpf.model.aggregation import Aggregator
from pcpu_bpf.model.breakdown import nr_units
from pcpu_bpf.model.events import (
    ALL_FIELDS,
    GFP_ATOMIC,
    GFP_KERNEL,
    ROOT_CGROUP_ID,
    Event,
    PercpuAlloc,
)
from pcpu_bpf.model.kernel_stats import CgroupStats, KernelStats
from pcpu_bpf.model.layout import DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.model.symbolizer import Symbolizer
from pcpu_bpf.model.tables import (
    SiteAddressKey,
    SnapshotContext,
    breakdown_of,
    map_usage,
    site_key,
)
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.geometry import CONFIG_L, Geometry
from pcpu_bpf.sim.pictures import chunk_map
from pcpu_bpf.sim.request import REQUEST_CALL_SITE, RequestOutcome
from pcpu_bpf.sim.scenarios import BOOT, PROFILER, SYMBOLS, Workload, get_scenario

# The simulator emits the 6.18 events, so every field is there.
SIM_FIELDS = dict.fromkeys(ALL_FIELDS, True)
SIM_KERNEL = "simulated-6.18"
# Workload steps per simulated second: the sim backend's pace, and the clock of
# `pcpu-bpf simulate`'s Snapshot.
OPS_PER_SECOND = 2000.0


class Simulation:
    """Deterministic for a given (scenario, seed, geometry): steps, events, Snapshots.

    ``before_tracing``: before the scenario starts and the aggregator listens, make the
    boot's allocations (scenarios.BOOT) and the profiler's own (scenarios.PROFILER), as
    a live host has them when the programs attach: the breakdown's untraced_live and
    profiler parts. Simulated time is ops / ``ops_per_second``; live entries are stamped
    with it, so ages are simulated seconds.
    """

    def __init__(
        self,
        scenario: str = "steady",
        seed: int = 0,
        *,
        geometry: Geometry = CONFIG_L,
        balance: str | None = None,
        live_capacity: int = DEFAULT_LIVE_CAPACITY,
        site_capacity: int = DEFAULT_SITE_CAPACITY,
        before_tracing: bool = False,
        ops_per_second: float = OPS_PER_SECOND,
        min_age: float | None = None,
    ) -> None:
        self.scenario = get_scenario(scenario)
        self.seed = seed
        self.geometry = geometry
        self.live_capacity = live_capacity
        self.site_capacity = site_capacity
        self.ops_per_second = ops_per_second
        self.min_age = min_age
        self.symbolizer = Symbolizer.from_symbols(SYMBOLS)
        self.ops = 0
        self.aggregator = Aggregator(
            self.symbolizer.resolve,
            possible_cpus=geometry.nr_possible_cpus,
            live_capacity=live_capacity,
            site_capacity=site_capacity,
            clock=self.now,
        )
        self.events = 0
        self.tracing = not before_tracing
        self.allocator = Allocator(
            geometry, balance=balance or self.scenario.balance, sink=self._on_event
        )
        # The scenario's tasks and their cgroups (made before any event can come in).
        self.workload = Workload(self.allocator, random.Random(seed))
        self.profiler_bytes_per_cpu: int | None = None
        if before_tracing:
            boot = Workload(self.allocator, random.Random(seed))
            for req in BOOT:
                boot.alloc(req)
            for req in PROFILER:
                boot.alloc(req)
            self.profiler_bytes_per_cpu = sum(req.size for req in PROFILER)
            self.tracing = True
        self._steps = self.scenario.run(self.workload)

    def now(self) -> float:
        """Simulated seconds since the scenario began."""
        return self.ops / self.ops_per_second

    def _on_event(self, event: Event) -> None:
        if not self.tracing:
            return
        self.events += 1
        cgroup = self.workload.cgroup
        if cgroup != ROOT_CGROUP_ID and isinstance(event, PercpuAlloc):
            event = dataclasses.replace(event, cgroup_id=cgroup)  # the program's helper call
        self.aggregator.apply(event)

    def advance(self, ops: int) -> None:
        """Run `ops` more workload steps (each one allocation or free)."""
        for _ in range(ops):
            next(self._steps)
            self.ops += 1

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
            cgroups=self.cgroup_stats(),
        )

    def cgroup_stats(self) -> CgroupStats | None:
        """The simulated host's cgroups, a cgroup v2 host's: its dying ones, for the
        scenarios that make cgroups; None for the others."""
        if not self.scenario.cgroups:
            return None
        return CgroupStats(dying={UNIFIED: self.workload.dying_cgroups})

    def snapshot(self, timestamp: float) -> Snapshot:
        """The Snapshot a live backend would give for the same events, with the ages of
        the live allocations and meminfo's Percpu in parts."""
        tables = self.aggregator.tables
        ks = self.kernel_stats(timestamp)
        units = nr_units(ks.percpu_stats, self.geometry.nr_possible_cpus)
        profiler = self.profiler_bytes_per_cpu
        parts = breakdown_of(tables, ks, units, profiler)
        fold: AgeFold[SiteAddressKey] = AgeFold(self.now(), min_age=self.min_age)
        fold.add((e.key, e.size, e.alloc_time) for e in self.aggregator.live_entries())
        ctx = SnapshotContext(
            backend="sim",
            kernel=SIM_KERNEL,
            timestamp=timestamp,
            nr_units=units,
            kernel_stats=ks,
            fields_available=SIM_FIELDS,
            maps=map_usage(tables, self.live_capacity, self.site_capacity),
            profiler_percpu_bytes=(
                None if profiler is None else profiler * self.geometry.nr_possible_cpus
            ),
            ages=fold.ages(nr_units=units, site_of=lambda k: site_key(k, self.symbolizer.resolve)),
            breakdown=parts,
            chunk_map=chunk_map(self.allocator),
            cgroup_labels=self.workload.cgroups.labels,
        )
        return self.aggregator.snapshot(ctx)
