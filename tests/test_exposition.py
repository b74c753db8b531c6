"""Reading an exposition back into a Snapshot through the catalog, and the round trip."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.exposition import read_exposition
from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.model.kernel_stats import BpfMapOwner, CgroupStats, KernelStats
from pcpu_bpf.model.ranking import OTHER
from pcpu_bpf.model.snapshot import MapUsage, ProgramStats, SiteKey, SiteRecord, Snapshot
from pcpu_bpf.sim.scenarios import SCENARIOS

MINIMAL = """\
# TYPE pcpu_exporter_info gauge
pcpu_exporter_info{backend="bpf",kernel="6.18.0",version="0.1.0"} 1
# TYPE pcpu_allocations_total counter
pcpu_allocations_total{atomic="false",call_site="mm_init",reserved="false"} 10
pcpu_allocations_total{atomic="true",call_site="mm_init",reserved="false"} 2
# TYPE pcpu_requested_bytes_total counter
pcpu_requested_bytes_total{atomic="false",call_site="mm_init",reserved="false"} 160
pcpu_requested_bytes_total{atomic="true",call_site="mm_init",reserved="false"} 32
# TYPE pcpu_live_bytes gauge
pcpu_live_bytes{atomic="false",call_site="mm_init",reserved="false"} 512
# TYPE pcpu_untracked_frees_total counter
pcpu_untracked_frees_total 9
# TYPE pcpu_allocation_failures_total counter
pcpu_allocation_failures_total{atomic="true",reserved="false"} 3
# TYPE pcpu_meminfo_bytes gauge
pcpu_meminfo_bytes 1.409024e+06
# TYPE pcpu_collector_success gauge
pcpu_collector_success{collector="percpu_stats"} 0
pcpu_collector_success{collector="meminfo"} 1
# TYPE process_open_fds gauge
process_open_fds 12
"""


def test_read_minimal_exposition() -> None:
    snap = read_exposition(MINIMAL, timestamp=42.0)
    assert (snap.backend, snap.kernel, snap.timestamp) == ("bpf", "6.18.0", 42.0)
    assert snap.sites == {
        SiteKey("mm_init"): SiteRecord(allocations=10, requested_bytes=160, live_bytes=512),
        SiteKey("mm_init", atomic=True): SiteRecord(allocations=2, requested_bytes=32),
    }
    assert snap.by_call_site["mm_init"].allocations == 12
    assert snap.untracked_frees == 9
    assert snap.failures[(True, False)] == 3
    assert snap.kernel_stats is not None
    assert snap.kernel_stats.meminfo_percpu_bytes == 1_409_024
    assert snap.kernel_stats.percpu_stats is None  # no pcpu_stats_* series at all
    assert set(snap.kernel_stats.errors) == {"percpu_stats"}
    assert snap.programs is None and snap.maps is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a pcpu-bpf daemon"),
        ("node_load1 0.5\n", "not a pcpu-bpf daemon"),
        ("this is { not prometheus\n", "not a pcpu-bpf exposition"),
        (MINIMAL.replace('call_site="mm_init",', "", 1), "not a pcpu-bpf exposition"),
        (MINIMAL.replace('atomic="true",call_site', 'atomic="maybe",call_site'), "boolean"),
        (MINIMAL + 'pcpu_allocation_size_bytes_bucket{le="3.0"} 1\n', "unexpected buckets"),
        (MINIMAL + "pcpu_stats_chunks 2\n", "incomplete"),
        (MINIMAL + "pcpu_chunk_creations_total NaN\n", "incomplete"),
    ],
)
def test_read_rejects(text: str, message: str) -> None:
    with pytest.raises(PcpuError, match=message):
        read_exposition(text, timestamp=0.0)


def exposition(snapshot: Snapshot) -> str:
    registry = CollectorRegistry()
    registry.register(PcpuCollector(lambda: snapshot, version="test"))
    return generate_latest(registry).decode()


def what_the_exposition_carries(snap: Snapshot) -> Snapshot:
    """``snap`` without what /metrics does not carry: per-chunk lines, error reasons, the
    chunk map, the per-cgroup figures but four."""
    cgroups = {
        name: SiteRecord(
            allocations=r.allocations,
            frees=r.frees,
            live_allocations=r.live_allocations,
            live_bytes=r.live_bytes,
        )
        for name, r in (snap.cgroups or {}).items()
    }
    snap = dataclasses.replace(snap, chunk_map=None, cgroups=cgroups)
    ks = snap.kernel_stats
    if ks is None:
        return snap
    stats = ks.percpu_stats
    ks = dataclasses.replace(
        ks,
        percpu_stats=None if stats is None else dataclasses.replace(stats, chunks=()),
        errors=dict.fromkeys(ks.errors, "failed in the daemon"),
    )
    return dataclasses.replace(snap, kernel_stats=ks)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_round_trip_loses_nothing_the_exposition_carries(scenario: str) -> None:
    backend = SimBackend(scenario, seed=3, clock=lambda: 0.0)
    backend.advance(3000)
    original = backend.snapshot()
    text = exposition(original)
    back = read_exposition(text, timestamp=original.timestamp)
    assert back == what_the_exposition_carries(original)
    assert exposition(back) == text


def test_round_trip_of_the_live_backends_parts() -> None:
    original = Snapshot(
        backend="bpf",
        kernel="6.18.0",
        timestamp=5.0,
        sites={SiteKey("bpf_map_alloc_percpu"): SiteRecord(2, 2000, 4000, 1, 2000, 1, 2000)},
        programs={
            "on_alloc": ProgramStats(10, 2_500_000_000, 1),
            "on_free": ProgramStats(None, None, 0),
        },
        maps={"live": MapUsage(3, 262144), "sites": MapUsage(1, 4096)},
        fields_available={("percpu_alloc_percpu", "call_site"): True},
        kernel_stats=KernelStats(
            meminfo_percpu_bytes=1 << 20,
            read_at=4.0,
            bpf_maps={
                BpfMapOwner("policy", "percpu_hash", "agent,+2 more"): 86016,
                BpfMapOwner("", "percpu_array", ""): 4096,
                BpfMapOwner(OTHER, "", ""): 512,
            },
            cgroups=CgroupStats(
                dying={"unified": 2, "memory": 31},
                memory_percpu_bytes={"/a/b (x)": 8192, OTHER: 40},
            ),
        ),
    )
    back = read_exposition(exposition(original), timestamp=5.0)
    assert back == original
