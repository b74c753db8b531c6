"""meminfo's Percpu in parts: the arithmetic on hand-made stats, and exactly on the simulator,
which knows every populated page and every allocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.model.breakdown import (
    NEEDS_PERCPU_STATS,
    PAGE_SIZE,
    PARTS,
    Breakdown,
    BreakdownInputs,
    breakdown,
    kernel_live_per_unit,
    nr_units,
)
from pcpu_bpf.model.tables import is_reserved
from pcpu_bpf.sim.chunk import BLOCK_BITS, MIN_ALLOC_SIZE
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S, Geometry
from pcpu_bpf.sim.scenarios import BOOT, PROFILER, SCENARIOS
from pcpu_bpf.sim.simulation import Simulation

FIXTURES = Path(__file__).parent / "fixtures" / "percpu_stats"
BOOT_STATS = parse_percpu_stats((FIXTURES / "boot.txt").read_text())


def test_boot_fixture_by_hand() -> None:
    # 2 units; first chunk: 31528 - 16 free bytes used; one dynamic chunk: 1 MiB - 803540
    # used, 43 empty pages. 53 first-chunk pages plus 200 populated dynamic pages per unit.
    live = (31528 - 16) + (1048576 - 803540)
    assert kernel_live_per_unit(BOOT_STATS) == live
    meminfo = (53 + 200) * PAGE_SIZE * 2
    b = breakdown(BreakdownInputs(meminfo, 2, traced_live_per_unit=1000, profiler_bytes=512))
    assert set(b.parts) == {"traced_live", "profiler", "unexplained"}  # no percpu_stats
    b = breakdown(
        BreakdownInputs(
            meminfo, 2, traced_live_per_unit=1000, profiler_bytes=512, percpu_stats=BOOT_STATS
        )
    )
    assert b.parts == {
        "static": 185560 * 2,
        "reserved": 0,
        "traced_live": 2000,
        "untraced_live": live * 2 - 2000 - 512,
        "profiler": 512,
        "empty_pages": 43 * PAGE_SIZE * 2,
        "free_in_used_pages": (253 * PAGE_SIZE - 185560 - live - 43 * PAGE_SIZE) * 2,
        "unexplained": 0,
    }
    assert b.total == meminfo and b.violations == () and b.explained_share == 1.0
    assert list(b.parts) == [p for p in PARTS if p in b.parts]


def test_without_percpu_stats_the_rest_is_unexplained_not_guessed() -> None:
    b = breakdown(BreakdownInputs(1 << 20, 2, traced_live_per_unit=4096, profiler_bytes=0))
    assert not set(NEEDS_PERCPU_STATS) & set(b.parts)
    assert b.parts["unexplained"] == (1 << 20) - 8192
    assert b.total == 1 << 20
    assert b.explained_share == pytest.approx(8192 / (1 << 20))


@pytest.mark.parametrize(
    ("meminfo", "traced", "broken"),
    [
        (253 * PAGE_SIZE * 2, 10**6, "untraced_live"),  # more traced than the kernel holds
        (100 * PAGE_SIZE * 2, 0, "free_in_used_pages"),  # fewer pages than live bytes need
        (253 * PAGE_SIZE * 2 + 1024, 0, "units"),  # not whole pages of 2 units
    ],
)
def test_bounds_are_reported_not_clipped(meminfo: int, traced: int, broken: str) -> None:
    b = breakdown(BreakdownInputs(meminfo, 2, traced_live_per_unit=traced, percpu_stats=BOOT_STATS))
    assert any(v.startswith(broken + ":") for v in b.violations), b.violations
    assert b.total == meminfo  # still adds up: nothing was clipped


def truth(sim: Simulation) -> dict[str, int]:
    """Every part per unit, counted page by page from the simulated chunks' bitmaps, and
    allocation by allocation from what was made before tracing and what tracing saw."""
    a, g = sim.allocator, sim.geometry
    live = empty = free_in_used = 0
    for _, chunk in a.chunk_lists():
        hidden = chunk.start_offset // MIN_ALLOC_SIZE + chunk.end_offset // MIN_ALLOC_SIZE
        used_bits = sum(bin(block).count("1") for block in chunk.amap) - hidden
        live += used_bits * MIN_ALLOC_SIZE
        for page in range(chunk.nr_pages):
            if not chunk.populated >> page & 1:
                continue
            if chunk.amap[page] == 0:
                empty += PAGE_SIZE
            else:
                free_in_used += (BLOCK_BITS - bin(chunk.amap[page]).count("1")) * MIN_ALLOC_SIZE
    traced = sum(e.size for e in sim.aggregator.live_entries() if not is_reserved(e.key))
    before = sim.profiler_bytes_per_cpu is not None
    profiler = sum(r.size for r in PROFILER) if before else 0
    untraced = sum(-(-r.size // 4) * 4 for r in BOOT) if before else 0
    assert live == traced + untraced + profiler  # the bitmaps agree with the requests
    parts = {
        "static": g.static_size,
        "reserved": g.reserved_size,
        "traced_live": traced,
        "untraced_live": untraced,
        "empty_pages": empty,
        "free_in_used_pages": free_in_used,
    }
    if before:
        parts["profiler"] = profiler
    return parts


@pytest.mark.parametrize("before_tracing", [False, True], ids=["traced-from-boot", "booted"])
@pytest.mark.parametrize("geometry", [CONFIG_L, CONFIG_S], ids=["reference", "small"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_exact_on_the_simulator(scenario: str, geometry: Geometry, before_tracing: bool) -> None:
    sim = Simulation(scenario, seed=2, geometry=geometry, before_tracing=before_tracing)
    for _ in range(3):
        sim.advance(1500)
        snap = sim.snapshot(sim.now())
        b = snap.breakdown
        assert b is not None and snap.kernel_stats is not None
        u = geometry.nr_units
        assert {p: n for p, n in b.parts.items() if p != "unexplained"} == {
            p: n * u for p, n in truth(sim).items()
        }
        assert b.parts["unexplained"] == 0 and b.violations == ()
        assert b.total == snap.kernel_stats.meminfo_percpu_bytes
        # Per-site live bytes add up to the traced part (no reserved allocations here).
        assert sum(s.live_bytes for s in snap.sites.values()) == b.parts["traced_live"]


def test_units_come_from_the_allocation_info() -> None:
    assert nr_units(BOOT_STATS, 2) == 2
    for geometry in (CONFIG_L, CONFIG_S):
        sim = Simulation(geometry=geometry)
        assert nr_units(sim.kernel_stats().percpu_stats, geometry.nr_possible_cpus) == (
            geometry.nr_units
        )
    # 3 possible CPUs in allocations of 2 units: 4 units; without percpu_stats, the CPUs.
    assert nr_units(BOOT_STATS, 3) == 4
    assert nr_units(None, 3) == 3


def test_the_simulated_profiler_is_the_real_footprint() -> None:
    from pcpu_bpf.bpf.footprint import bytes_per_cpu
    from pcpu_bpf.bpf.maps import MAP_SPECS, Capacities
    from pcpu_bpf.bpf.syscalls import MapInfo
    from pcpu_bpf.model.layout import DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY

    caps = Capacities(DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY)
    infos = [
        MapInfo(0, spec.type, spec.key_size, spec.value_size, spec.entries(caps), 0, name)
        for name, spec in MAP_SPECS.items()
    ]
    assert sum(r.size for r in PROFILER) == bytes_per_cpu(infos, 5, CONFIG_L.nr_possible_cpus)


def test_parts_keep_their_order_whatever_order_they_come_in() -> None:
    b = Breakdown({"unexplained": 0, "static": 5, "traced_live": 2, "newer_part": 1})
    assert list(b.parts) == ["static", "traced_live", "unexplained", "newer_part"]
    assert b == Breakdown({"static": 5, "traced_live": 2, "unexplained": 0, "newer_part": 1})
