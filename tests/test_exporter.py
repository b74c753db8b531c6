"""PcpuCollector on hand-made Snapshots: names, types, histograms, zeros, failing parts."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.prometheus import PcpuCollector
from pcpu_bpf import __version__
from pcpu_bpf.model.breakdown import Breakdown
from pcpu_bpf.model.kernel_stats import (
    AllocationInfo,
    BpfMapOwner,
    CgroupStats,
    ChunkStats,
    GlobalStats,
    KernelStats,
    PercpuStats,
)
from pcpu_bpf.model.snapshot import (
    AgeKey,
    LiveAges,
    MapUsage,
    ProgramStats,
    SiteKey,
    SiteRecord,
    SizeHistogram,
    Snapshot,
)

STATS = PercpuStats.of(
    AllocationInfo(1 << 20, 185560, 0, 31528, 1 << 21, 1 << 21),
    GlobalStats(100, 40, 60, 70, 2, 3, 4, 4096, 5),
    (
        ChunkStats("first", 10, 64, 0, 0, 1000, 800, 200, 120, 4, 8, 64),
        ChunkStats("normal", 50, 4096, 5, 0, 9000, 8000, 300, 250, 8, 16, 4096),
    ),
)


def full_snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = dict(
        backend="bpf",
        kernel="6.18.0",
        timestamp=1.0,
        sites={
            SiteKey("mm_init", False, False): SiteRecord(3, 48, 96, 1, 32, 2, 64, 64),
            SiteKey("mm_init", True, False): SiteRecord(1, 16, 32, 0, 0, 1, 32, 32),
            SiteKey("bpf_map_alloc_percpu", owner="array_map_alloc"): SiteRecord(
                2, 2000, 4000, 0, 0, 2, 4000, 4000
            ),
        },
        cgroups={
            "/": SiteRecord(4, 64, 128, 1, 32, 3, 96),
            "/system.slice/agent.service (deleted)": SiteRecord(2, 2000, 4000, 0, 0, 2, 4000),
        },
        owner_unresolved={"only_helpers": 2},
        ages=LiveAges(
            oldest_seconds={
                SiteKey("mm_init"): 4000.5,
                SiteKey("bpf_map_alloc_percpu", owner="array_map_alloc"): 2.0,
            },
            bytes_by_age={
                AgeKey("mm_init", False, False, "mm_init", "1m"): 32,
                AgeKey("mm_init", False, False, "mm_init", "1d"): 32,
                AgeKey("bpf_map_alloc_percpu", False, False, "array_map_alloc", "1m"): 4000,
            },
        ),
        breakdown=Breakdown({"static": 4 << 20, "traced_live": 4096, "unexplained": 4 << 20}),
        untracked_frees=7,
        size_histogram=SizeHistogram((0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0), 2064),
        failures={(True, False): 2},
        failed_size_histogram=SizeHistogram((0,) * 14 + (2,), 2 * 65536),
        chunk_creations=3,
        chunk_destructions=1,
        dropped={"live_table_full": 5},
        kernel_stats=KernelStats(
            STATS,
            8 << 20,
            read_at=0.25,
            bpf_maps={BpfMapOwner("policy", "percpu_hash", "agent"): 86016},
            cgroups=CgroupStats(
                dying={"unified": 3, "memory": 12},
                memory_percpu_bytes={"/system.slice": 40960, "/": 8192},
            ),
        ),
        fields_available={("percpu_alloc_percpu", "call_site"): True},
        programs={"pcpu_alloc": ProgramStats(10, 2_500_000_000, 1)},
        maps={"sites": MapUsage(3, 4096)},
        tracking_start_time=1_790_000_000.5,
        profiler_percpu_bytes=1160,
    )
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


def scrape(collector: PcpuCollector) -> dict[str, object]:
    return {family.name: family for family in collector.collect()}


def read(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ONE scrape (get_sample_value would scrape again each time)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def registry_for(snapshot_fn: object) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PcpuCollector(snapshot_fn))  # type: ignore[arg-type]
    return registry


EXPECTED_TYPES = {
    "pcpu_exporter_info": "gauge",
    "pcpu_collector_success": "gauge",
    "pcpu_collector_errors": "counter",
    "pcpu_allocations": "counter",
    "pcpu_allocated_bytes": "counter",
    "pcpu_requested_bytes": "counter",
    "pcpu_frees": "counter",
    "pcpu_untracked_frees": "counter",
    "pcpu_freed_bytes": "counter",
    "pcpu_live_allocations": "gauge",
    "pcpu_live_bytes": "gauge",
    "pcpu_memcg_extension_bytes": "gauge",
    "pcpu_live_oldest_age_seconds": "gauge",
    "pcpu_live_by_age_bytes": "gauge",
    "pcpu_allocation_size_bytes": "histogram",
    "pcpu_allocation_failures": "counter",
    "pcpu_failed_allocation_size_bytes": "histogram",
    "pcpu_chunk_creations": "counter",
    "pcpu_chunk_destructions": "counter",
    "pcpu_tracepoint_field_available": "gauge",
    "pcpu_tracking_dropped": "counter",
    "pcpu_bpf_program_runs": "counter",
    "pcpu_bpf_program_run_seconds": "counter",
    "pcpu_bpf_program_recursion_misses": "counter",
    "pcpu_bpf_map_entries": "gauge",
    "pcpu_bpf_map_capacity": "gauge",
    "pcpu_kernel_stats_age_seconds": "gauge",
    "pcpu_tracking_start_time_seconds": "gauge",
    "pcpu_profiler_percpu_bytes": "gauge",
    "pcpu_stats_allocations": "counter",
    "pcpu_stats_frees": "counter",
    "pcpu_stats_live_allocations": "gauge",
    "pcpu_stats_max_live_allocations": "gauge",
    "pcpu_stats_chunks": "gauge",
    "pcpu_stats_max_chunks": "gauge",
    "pcpu_stats_min_allocation_size_bytes": "gauge",
    "pcpu_stats_max_allocation_size_bytes": "gauge",
    "pcpu_stats_empty_populated_pages": "gauge",
    "pcpu_stats_free_unit_bytes": "gauge",
    "pcpu_stats_fragmented_unit_bytes": "gauge",
    "pcpu_stats_max_fragment_unit_bytes": "gauge",
    "pcpu_stats_contig_free_unit_bytes": "gauge",
    "pcpu_stats_unit_size_bytes": "gauge",
    "pcpu_stats_static_size_bytes": "gauge",
    "pcpu_stats_reserved_size_bytes": "gauge",
    "pcpu_stats_dynamic_size_bytes": "gauge",
    "pcpu_stats_atom_size_bytes": "gauge",
    "pcpu_stats_alloc_size_bytes": "gauge",
    "pcpu_meminfo_bytes": "gauge",
    "pcpu_memory_bytes": "gauge",
    "pcpu_memory_bound_violations": "counter",
    "pcpu_bpf_map_percpu_bytes": "gauge",
    "pcpu_cgroup_dying_descendants": "gauge",
    "pcpu_cgroup_memory_percpu_bytes": "gauge",
    "pcpu_cgroup_allocations": "counter",
    "pcpu_cgroup_frees": "counter",
    "pcpu_cgroup_live_allocations": "gauge",
    "pcpu_cgroup_live_bytes": "gauge",
    "pcpu_owner_unresolved": "counter",
}


def test_whole_catalog_with_types_and_help() -> None:
    families = list(PcpuCollector(full_snapshot).collect())
    assert {f.name: f.type for f in families} == EXPECTED_TYPES
    assert all(len(f.documentation) > 20 for f in families)


def test_describe_names_everything_and_takes_no_snapshot() -> None:
    calls = []

    def snap() -> Snapshot:
        calls.append(1)
        return full_snapshot()

    collector = PcpuCollector(snap)
    described = {f.name: f.type for f in collector.describe()}
    registry = CollectorRegistry()
    registry.register(collector)
    assert calls == []  # registering must not scrape the backend
    assert described == EXPECTED_TYPES
    assert all(not f.samples for f in collector.describe())


def test_values_in_base_units() -> None:
    registry = registry_for(full_snapshot)
    get = registry.get_sample_value
    assert (
        get(
            "pcpu_allocations_total",
            {"call_site": "mm_init", "atomic": "true", "reserved": "false", "owner": "mm_init"},
        )
        == 1
    )
    plain = {"atomic": "false", "reserved": "false", "owner": "mm_init"}
    assert get("pcpu_allocated_bytes_total", {"call_site": "mm_init", **plain}) == 96
    assert get("pcpu_memcg_extension_bytes", {"call_site": "mm_init", **plain}) == 64
    assert get("pcpu_live_oldest_age_seconds", {"call_site": "mm_init", **plain}) == 4000.5
    assert get("pcpu_live_by_age_bytes", {"call_site": "mm_init", "age": "1d", **plain}) == 32
    assert get("pcpu_live_by_age_bytes", {"call_site": "mm_init", "age": "1h", **plain}) is None
    assert get("pcpu_memory_bytes", {"part": "traced_live"}) == 4096
    assert (
        get("pcpu_memory_bound_violations_total", {"part": "untraced_live", "settled": "true"}) == 0
    )
    assert get("pcpu_requested_bytes_total", {"call_site": "mm_init", **plain}) == 48
    assert get("pcpu_untracked_frees_total") == 7
    owned = {**plain, "call_site": "bpf_map_alloc_percpu", "owner": "array_map_alloc"}
    assert get("pcpu_live_bytes", owned) == 4000
    assert get("pcpu_cgroup_live_bytes", {"cgroup": "/system.slice/agent.service (deleted)"}) == (
        4000
    )
    assert get("pcpu_cgroup_allocations_total", {"cgroup": "/"}) == 4
    assert get("pcpu_owner_unresolved_total", {"reason": "only_helpers"}) == 2
    assert get("pcpu_owner_unresolved_total", {"reason": "no_stack"}) == 0
    assert get("pcpu_bpf_program_run_seconds_total", {"program": "pcpu_alloc"}) == 2.5
    assert get("pcpu_bpf_program_recursion_misses_total", {"program": "pcpu_alloc"}) == 1
    assert get("pcpu_stats_free_unit_bytes") == 10000
    assert get("pcpu_stats_max_fragment_unit_bytes") == 250
    assert get("pcpu_stats_contig_free_unit_bytes") == 8000
    assert get("pcpu_meminfo_bytes") == 8 << 20
    assert get("pcpu_kernel_stats_age_seconds") == 0.75  # read at 0.25, snapshot at 1.0
    assert (
        get("pcpu_exporter_info", {"version": __version__, "backend": "bpf", "kernel": "6.18.0"})
        == 1
    )


def test_histogram_buckets_are_cumulative_and_complete() -> None:
    family = scrape(PcpuCollector(full_snapshot))["pcpu_allocation_size_bytes"]
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [f"{4 << i}.0" for i in range(14)] + ["+Inf"]
    values = [v for _, v in buckets]
    assert values == sorted(values)
    assert values[2] == 4 and values[-1] == 6
    totals = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert totals == {"pcpu_allocation_size_bytes_count": 6, "pcpu_allocation_size_bytes_sum": 2064}
    failed = scrape(PcpuCollector(full_snapshot))["pcpu_failed_allocation_size_bytes"]
    assert [s.value for s in failed.samples if s.labels.get("le") == "32768.0"] == [0]
    assert [s.value for s in failed.samples if s.labels.get("le") == "+Inf"] == [2]


def test_series_known_in_advance_are_zero() -> None:
    empty = Snapshot(backend="sim", kernel="k", timestamp=0.0, fields_available={})
    registry = registry_for(lambda: empty)
    for atomic in ("true", "false"):
        for reserved in ("true", "false"):
            labels = {"atomic": atomic, "reserved": reserved}
            assert registry.get_sample_value("pcpu_allocation_failures_total", labels) == 0
    for reason in ("live_table_full", "site_table_full"):
        assert registry.get_sample_value("pcpu_tracking_dropped_total", {"reason": reason}) == 0
    for event, field in [("percpu_alloc_percpu", "bytes_alloc"), ("percpu_free_percpu", "ptr")]:
        labels = {"event": event, "field": field}
        assert registry.get_sample_value("pcpu_tracepoint_field_available", labels) == 0
    assert registry.get_sample_value("pcpu_chunk_creations_total") == 0
    assert registry.get_sample_value("pcpu_allocation_size_bytes_count") == 0


def test_kernel_stats_only_when_present() -> None:
    names = set(scrape(PcpuCollector(lambda: full_snapshot(kernel_stats=None))))
    assert not {n for n in names if n.startswith(("pcpu_stats_", "pcpu_meminfo"))}
    assert "pcpu_allocations" in names
    only_meminfo = full_snapshot(kernel_stats=KernelStats(None, 4096))
    names = set(scrape(PcpuCollector(lambda: only_meminfo)))
    assert "pcpu_meminfo_bytes" in names and "pcpu_stats_chunks" not in names


def test_sim_backend_without_programs_omits_bpf_families() -> None:
    sim_like = full_snapshot(
        programs=None, maps=None, kernel_stats=KernelStats(STATS, 8 << 20), cgroups=None
    )
    names = set(scrape(PcpuCollector(lambda: sim_like)))
    assert not {n for n in names if n.startswith(("pcpu_bpf_", "pcpu_cgroup_"))}


def test_failing_kernel_part_is_counted_and_the_rest_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = full_snapshot(
        kernel_stats=KernelStats(None, 4096, {"percpu_stats": "Permission denied"})
    )
    registry = registry_for(lambda: broken)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            generate_latest(registry)
        samples = read(registry)
    assert value(samples, "pcpu_collector_success", collector="percpu_stats") == 0
    assert value(samples, "pcpu_collector_errors_total", collector="percpu_stats") == 3
    assert value(samples, "pcpu_collector_success", collector="meminfo") == 1
    assert value(samples, "pcpu_collector_errors_total", collector="meminfo") == 0
    assert value(samples, "pcpu_meminfo_bytes") == 4096
    assert value(samples, "pcpu_untracked_frees_total") == 7
    # Logged once, not on every scrape.
    assert [r.getMessage() for r in caplog.records] == [
        "collector percpu_stats failed, rest of /metrics served: Permission denied"
    ]


def test_snapshot_raising_serves_self_metrics_and_counts() -> None:
    state = {"fail": False}

    def snap() -> Snapshot:
        if state["fail"]:
            raise OSError("bpf map read failed")
        return full_snapshot()

    registry = registry_for(snap)
    generate_latest(registry)
    state["fail"] = True
    text = generate_latest(registry).decode()
    samples = read(registry)
    assert "pcpu_allocations_total" not in text
    assert value(samples, "pcpu_collector_errors_total", collector="snapshot") == 2
    for part in ("snapshot", "tracing", "percpu_stats", "meminfo"):
        assert value(samples, "pcpu_collector_success", collector=part) == 0
    # The last good snapshot still names backend and kernel.
    info = {"version": __version__, "backend": "bpf", "kernel": "6.18.0"}
    assert value(samples, "pcpu_exporter_info", **info) == 1
    state["fail"] = False
    samples = read(registry)
    assert value(samples, "pcpu_collector_success", collector="snapshot") == 1
    assert value(samples, "pcpu_collector_errors_total", collector="snapshot") == 2


def test_bad_tracing_data_spoils_only_its_part() -> None:
    bad = full_snapshot(programs={"on_alloc": object()})  # a bug: not a ProgramStats
    samples = read(registry_for(lambda: bad))
    assert value(samples, "pcpu_collector_success", collector="tracing") == 0
    assert value(samples, "pcpu_collector_errors_total", collector="tracing") == 1
    assert value(samples, "pcpu_stats_chunks") == 2
    assert not [key for key in samples if key[0] == "pcpu_allocations_total"]


def test_every_collect_takes_exactly_one_fresh_snapshot() -> None:
    calls = []

    def snap() -> Snapshot:
        calls.append(1)
        return full_snapshot(chunk_creations=len(calls))

    registry = registry_for(snap)
    assert registry.get_sample_value("pcpu_chunk_creations_total") == 1
    assert registry.get_sample_value("pcpu_chunk_creations_total") == 2
    assert len(calls) == 2


def test_bound_violations_are_counted_by_part_and_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    why = "untraced_live: traced bytes exceed the kernel's live bytes"
    parts = {"traced_live": 8192, "untraced_live": -4096, "unexplained": 0}
    state = {"violations": (why,)}

    def snap() -> Snapshot:
        return full_snapshot(breakdown=Breakdown(parts, state["violations"]))

    registry = registry_for(snap)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            generate_latest(registry)
        state["violations"] = ()
        generate_latest(registry)
        samples = read(registry)
    counted = "pcpu_memory_bound_violations_total"
    assert value(samples, counted, part="untraced_live", settled="true") == 3
    assert value(samples, counted, part="untraced_live", settled="false") == 0
    assert value(samples, counted, part="units", settled="true") == 0
    # Served unclipped: the parts still add up to what they add up to.
    assert value(samples, "pcpu_memory_bytes", part="untraced_live") == -4096
    assert [r.getMessage() for r in caplog.records] == [
        f"breakdown bound broken, parts served unclipped: {why}",
        "breakdown bound of untraced_live holds again",
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_bounds_broken_while_the_kernel_moved_are_counted_apart_and_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    why = (
        "free_in_used_pages: above percpu_stats' free bytes (percpu events came in during the read)"
    )
    parts = {"traced_live": 8192, "free_in_used_pages": 4096, "unexplained": 0}

    def snap() -> Snapshot:
        return full_snapshot(breakdown=Breakdown(parts, (why,), settled=False))

    registry = registry_for(snap)
    with caplog.at_level(logging.INFO):
        generate_latest(registry)
        generate_latest(registry)
        samples = read(registry)
    counted = "pcpu_memory_bound_violations_total"
    assert value(samples, counted, part="free_in_used_pages", settled="false") == 3
    assert value(samples, counted, part="free_in_used_pages", settled="true") == 0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"breakdown bound broken, parts served unclipped: {why}")
    ]
