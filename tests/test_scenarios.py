"""Scenarios through the simulator and the reference aggregator, and `pcpu-bpf simulate`."""

from __future__ import annotations

import json
import random
import re

import pytest
from daemon_helpers import Samples, parse
from prometheus_client import CollectorRegistry, generate_latest

from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.cli import main
from pcpu_bpf.model.events import GFP_ATOMIC, GFP_KERNEL
from pcpu_bpf.model.snapshot_json import snapshot_to_dict
from pcpu_bpf.sim.allocator import BALANCE_LOG_LEN, Allocator
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S, Geometry
from pcpu_bpf.sim.scenarios import NETNS, SCENARIOS, STEADY_KEEP, SYMBOLS
from pcpu_bpf.sim.simulation import Simulation

OPS = 3000


def run(name: str, seed: int = 0, ops: int = OPS) -> Simulation:
    sim = Simulation(name, seed)
    sim.advance(ops)
    return sim


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_is_deterministic_and_agrees_with_kernel_stats(name: str) -> None:
    a, b = run(name), run(name)
    snap = a.snapshot(1.0)
    assert snapshot_to_dict(snap) == snapshot_to_dict(b.snapshot(1.0))
    assert snapshot_to_dict(snap) != snapshot_to_dict(run(name, seed=1).snapshot(1.0))
    # Tracing started at boot, so every live allocation is tracked: the tables' live
    # count must equal the allocator's own nr_cur_alloc.
    assert snap.kernel_stats is not None and snap.kernel_stats.percpu_stats is not None
    assert snap.totals.live_allocations == snap.kernel_stats.percpu_stats.globals.nr_cur_alloc
    assert snap.untracked_frees == 0
    for s in snap.sites.values():
        assert s.allocated_bytes - s.freed_bytes == s.live_bytes
    assert set(snap.by_call_site) <= set(SYMBOLS)


def test_leak_has_a_site_that_never_frees() -> None:
    sim = run("leak")
    early = sim.snapshot(0.0).by_call_site["leaky_driver_open"]
    sim.advance(OPS)
    late = sim.snapshot(1.0).by_call_site["leaky_driver_open"]
    assert early.frees == late.frees == 0
    assert late.live_allocations > early.live_allocations > 0


def test_steady_holds_its_live_count() -> None:
    # Mean-reverting around STEADY_KEEP (400) with a spread of about sqrt(400) = 20, so
    # 400 +- 100 is five standard deviations; the old "floor, then 50/50" random walk
    # was some 350 above the floor by 200k steps.
    sim = Simulation("steady", 0)
    seen = []
    for _ in range(8):
        sim.advance(25_000)
        seen.append(sim.allocator.nr_cur_alloc)
    assert all(STEADY_KEEP - 100 <= n <= STEADY_KEEP + 100 for n in seen), seen


def test_atomic_pressure_keeps_failing_after_warm_up() -> None:
    # Waves of ~350 steps: every 5,000-step window well after warm-up holds failures
    # (about 800 each for seed 0), not just the first few thousand steps.
    sim = run("atomic-pressure", ops=20_000)
    before = sim.snapshot(0.0).failures[(True, False)]
    for _ in range(4):
        sim.advance(5_000)
        after = sim.snapshot(1.0).failures[(True, False)]
        assert after - before > 100
        before = after
    assert sim.snapshot(2.0).failures[(False, False)] == 0


def test_atomic_pressure_uses_atomic_callers() -> None:
    snap = run("atomic-pressure").snapshot(1.0)
    assert set(snap.by_call_site) == {"alloc_bulk", "dst_cache_init"}


def test_memcg_churn_live_bytes_grow() -> None:
    sim = Simulation("memcg-churn", 0)
    live = []
    for _ in range(4):
        sim.advance(4_000)
        live.append(sim.snapshot(1.0).totals.live_bytes)
    assert live == sorted(live) and len(set(live)) == len(live), live
    assert live[-1] > 2 * live[0]


# The memory cgroups' call sites, as docs/promql.md selects them: older kernels' names (the
# simulator's) and 6.18's, where mem_cgroup_alloc and its per-node part are inlined.
MEMCG_SITES = re.compile(
    "mem_cgroup.*|alloc_mem_cgroup_per_node_info|memcg.*|css_rstat_init|cgroup_rstat_init"
    "|psi_cgroup_alloc"
)


def by_site(samples: Samples, family: str) -> dict[str, float]:
    """A per-site family's samples by call site (none of the simulator's is atomic)."""
    return {dict(labels)["call_site"]: v for (name, labels), v in samples.items() if name == family}


def test_memcg_churn_has_the_zombie_shape_of_a_live_host() -> None:
    """What scripts/zombie-memcg-demo.sh shows on a live host, read from the same series:
    the dying count grows, the memory cgroups' call sites keep live bytes, and their
    oldest allocation ages with the run. A zombie keeps all but its percpu_ref."""
    sim = Simulation("memcg-churn", 0, before_tracing=True)
    registry = CollectorRegistry()
    registry.register(PcpuCollector(lambda: sim.snapshot(sim.now())))
    seen = []
    for _ in range(3):
        sim.advance(20_000)  # ten simulated seconds
        samples = parse(generate_latest(registry).decode())
        dying = samples["pcpu_cgroup_dying_descendants", frozenset({("hierarchy", "unified")})]
        live = by_site(samples, "pcpu_live_allocations")
        # A cgroup half made or half freed between two steps puts it one off.
        assert abs(live["mem_cgroup_alloc"] - live["percpu_ref_init"] - dying) <= 1
        memcg = [s for s in live if MEMCG_SITES.fullmatch(s)]
        live_bytes = by_site(samples, "pcpu_live_bytes")
        oldest = by_site(samples, "pcpu_live_oldest_age_seconds")
        seen.append((dying, sum(live_bytes[s] for s in memcg), max(oldest[s] for s in memcg)))
    for figure in zip(*seen, strict=True):
        assert list(figure) == sorted(figure) and len(set(figure)) == 3, seen


def test_leak_fills_the_live_table_slowly() -> None:
    # One leaked allocation per 2,000 steps (one a second for the sim daemon), the
    # first at step 250: 262,144 live entries take about three days.
    sim = run("leak", ops=20_000)
    assert sim.snapshot(1.0).by_call_site["leaky_driver_open"].live_allocations == 10


def test_balance_log_is_bounded() -> None:
    sim = Simulation("atomic-pressure", 0, balance="eager")
    sim.advance(6_000)  # some 1,200 balance requests and runs
    log = sim.allocator.balance_log
    assert len(log) == BALANCE_LOG_LEN
    assert log[0][0] > 12  # the oldest entries are gone (the first is at op 12)
    assert log[-1][1] == "run" and log[-1][0] > 5_900


def _check_frag_stats(a: Allocator) -> None:
    chunks = [c for _, c in a.chunk_lists()]
    if a.reserved_chunk is not None:
        chunks.append(a.reserved_chunk)
    for c in chunks:
        # the memoized value (filled by the previous call) against a fresh walk
        assert c.frag_stats() == c._frag_stats(), hex(c.base_addr)


@pytest.mark.parametrize(("geometry", "seed"), [(CONFIG_S, 0), (CONFIG_S, 1), (CONFIG_L, 2)])
def test_frag_stats_memo_matches_a_fresh_walk(geometry: Geometry, seed: int) -> None:
    rng = random.Random(seed)
    a = Allocator(geometry, balance="every:7")
    live: list[int] = []
    sizes = (4, 8, 12, 40, 192, 1024, 4096, 8192, 32768)
    _check_frag_stats(a)
    for _ in range(1500):
        r = rng.random()
        if r < 0.02:
            a.fail_next_populate()  # the populate failure path frees the area again
        if r < 0.55 or not live:
            gfp = GFP_ATOMIC if rng.random() < 0.2 else GFP_KERNEL
            ptr = a.alloc(
                rng.choice(sizes),
                rng.choice((4, 8, 64, 4096)),
                reserved=rng.random() < 0.1,
                gfp=gfp,
            )
            if ptr is not None:
                live.append(ptr)
        else:
            i = rng.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            a.free(live.pop())
        _check_frag_stats(a)
    assert a.nr_chunks > 1  # chunks were created (and the memo saw them change)


def test_frag_stats_is_memoized() -> None:
    a = Allocator(CONFIG_S)
    a.alloc(40, 8)
    c = a.first_chunk
    first = c.frag_stats()
    assert c.frag_stats() is first
    a.alloc(40, 8)
    assert c.frag_stats() is not first and c.frag_stats() == c._frag_stats()


def test_netns_churn_uses_the_networking_call_sites() -> None:
    snap = run("netns-churn").snapshot(1.0)
    assert {r.site for r in NETNS} <= set(snap.by_call_site)


def test_bpf_maps_allocates_multiples_of_eight_from_one_site() -> None:
    snap = run("bpf-maps").snapshot(1.0)
    assert list(snap.by_call_site) == ["bpf_map_alloc_percpu"]
    # Percpu bytes are the size on each of the 2 units; bytes_alloc (4 x size on the
    # 2-CPU memcg geometry) adds 2 x size of memcg extension, counted apart.
    counts = snap.by_call_site["bpf_map_alloc_percpu"]
    assert counts.allocated_bytes == 2 * counts.requested_bytes
    assert counts.memcg_extension_bytes == counts.live_bytes
    assert counts.requested_bytes % 8 == 0


def test_atomic_pressure_produces_atomic_failures() -> None:
    snap = run("atomic-pressure").snapshot(1.0)
    assert snap.failures[(True, False)] > 0
    assert snap.failures[(False, False)] == 0
    assert snap.failed_size_histogram.count == snap.total_failures


def test_chunk_churn_creates_and_destroys_chunks() -> None:
    snap = run("chunk-churn", ops=6000).snapshot(1.0)
    assert snap.chunk_creations > 0
    assert snap.chunk_destructions > 0
    stats = snap.kernel_stats.percpu_stats
    assert stats.globals.nr_chunks == 1 + snap.chunk_creations - snap.chunk_destructions


def test_sim_backend_advances_with_its_clock() -> None:
    now = [0.0]
    backend = SimBackend("steady", 0, ops_per_second=1000, clock=lambda: now[0])
    first = backend.snapshot()
    now[0] = 0.5
    second = backend.snapshot()
    assert (first.timestamp, second.timestamp) == (0.0, 0.5)
    assert backend.simulation.ops == 500
    assert second.backend == "sim"


def test_sim_backend_skips_a_long_gap_instead_of_replaying_it() -> None:
    now = [0.0]
    backend = SimBackend("steady", 0, ops_per_second=100, clock=lambda: now[0])
    now[0] = 3600.0  # no scrape for an hour
    assert backend.snapshot().timestamp == SimBackend.MAX_CATCH_UP_SECONDS
    now[0] = 3601.0  # and from there on, time runs as before
    assert backend.snapshot().timestamp == SimBackend.MAX_CATCH_UP_SECONDS + 1.0


def test_simulate_prints_a_summary(runner) -> None:
    result = runner.invoke(main, ["simulate", "-s", "netns-churn", "--ops", "2000"])
    assert result.exit_code == 0, result.output
    assert "scenario netns-churn (seed 0)" in result.output
    assert "ipv4_mib_init_net" in result.output


def test_simulate_stats_prints_kernel_format(runner) -> None:
    result = runner.invoke(main, ["simulate", "--ops", "100", "--stats"])
    assert result.exit_code == 0, result.output
    assert "Percpu Memory Statistics\nAllocation Info:\n" in result.output
    assert "Chunk: <- First Chunk" in result.output


def test_simulate_json_is_the_snapshot(runner) -> None:
    result = runner.invoke(main, ["simulate", "-s", "leak", "--ops", "500", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["backend"] == "sim"
    assert "leaky_driver_open" in {s["call_site"] for s in doc["sites"]}


def test_unknown_scenario_lists_the_known_ones(runner) -> None:
    result = runner.invoke(main, ["simulate", "-s", "nope"])
    assert result.exit_code == 2
    for name in SCENARIOS:
        assert name in result.output


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ("8/6", "rejected as the kernel does, no event"),
        ("8/8192", "rejected as the kernel does, no event"),
        ("32769/4", "rejected as the kernel does, no event"),
        ("0/8", "rejected as the kernel does, no event"),
        ("16/8", "ptr 0x"),
    ],
)
def test_simulate_explicit_requests(runner, request_: str, says: str) -> None:
    result = runner.invoke(main, ["simulate", "--ops", "0", "--alloc", request_])
    assert result.exit_code == 0, result.output
    assert says in result.output


def test_simulate_bad_request_syntax_is_a_usage_error(runner) -> None:
    result = runner.invoke(main, ["simulate", "--alloc", "lots"])
    assert result.exit_code == 2
    assert "SIZE[/ALIGN][,atomic]" in result.output
    assert "Traceback" not in result.output
