"""Reading /metrics back into a Snapshot: URL handling, parsing, and the catalog round trip."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends.remote import MetricsSource, normalize_url, parse_metrics
from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.model.snapshot import Snapshot


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("127.0.0.1:9717", "http://127.0.0.1:9717/metrics"),
        ("http://127.0.0.1:9717", "http://127.0.0.1:9717/metrics"),
        ("http://127.0.0.1:9717/", "http://127.0.0.1:9717/metrics"),
        ("http://[::1]:9717/metrics", "http://[::1]:9717/metrics"),
        ("https://host/pcpu/metrics?x=1", "https://host/pcpu/metrics?x=1"),
    ],
)
def test_normalize_url(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/metrics", "not an http URL"),
        ("http://", "not an http URL"),
        ("file:///etc/passwd", "not an http URL"),
        ("http://[::1", "not a valid URL"),
        ("http://127.0.0.1:port", "not a valid URL"),
    ],
)
def test_normalize_url_rejects(url: str, why: str) -> None:
    with pytest.raises(PcpuError, match=why):
        normalize_url(url)


def test_exposition_with_a_label_missing_is_one_error() -> None:
    text = MINIMAL.replace('call_site="mm_init",', "")
    with pytest.raises(PcpuError, match="lacks the label 'call_site'"):
        parse_metrics(text, 0.0)


MINIMAL = """\
# TYPE pcpu_exporter_info gauge
pcpu_exporter_info{backend="bpf",kernel="6.18.0",version="0.1.0"} 1
# TYPE pcpu_allocations_total counter
pcpu_allocations_total{atomic="false",call_site="mm_init",reserved="false"} 10
pcpu_allocations_total{atomic="true",call_site="mm_init",reserved="false"} 2
# TYPE pcpu_requested_bytes_total counter
pcpu_requested_bytes_total{call_site="mm_init"} 192
# TYPE pcpu_allocated_bytes_total counter
pcpu_allocated_bytes_total{call_site="mm_init"} 768
# TYPE pcpu_frees_total counter
pcpu_frees_total{call_site="mm_init"} 4
pcpu_frees_total{call_site="untracked"} 9
# TYPE pcpu_live_allocations gauge
pcpu_live_allocations{call_site="mm_init"} 8
# TYPE pcpu_live_bytes gauge
pcpu_live_bytes{call_site="mm_init"} 512
# TYPE pcpu_allocation_failures_total counter
pcpu_allocation_failures_total{atomic="true",reserved="false"} 3
# TYPE pcpu_meminfo_bytes gauge
pcpu_meminfo_bytes 1.409024e+06
# TYPE pcpu_collector_success gauge
pcpu_collector_success{collector="percpu_stats"} 0
pcpu_collector_success{collector="meminfo"} 1
"""


def test_parse_minimal_exposition() -> None:
    snap = parse_metrics(MINIMAL, timestamp=42.0)
    assert (snap.backend, snap.kernel, snap.timestamp) == ("bpf", "6.18.0", 42.0)
    by_site = snap.allocations_by_site()["mm_init"]
    assert (by_site.allocations, by_site.requested_bytes, by_site.allocated_bytes) == (12, 192, 768)
    assert snap.sites["mm_init"].live_bytes == 512
    assert snap.sites["untracked"].frees == 9
    assert snap.failures == {(True, False): 3}
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
        ("this is { not prometheus\n", "not a Prometheus exposition"),
        (
            MINIMAL + 'pcpu_allocation_size_bytes_bucket{le="3.0"} 1\n',
            "unexpected buckets",
        ),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(PcpuError, match=message):
        parse_metrics(text, timestamp=0.0)


def _exposition(snapshot: Snapshot) -> str:
    registry = CollectorRegistry()
    registry.register(PcpuCollector(lambda: snapshot))
    return generate_latest(registry).decode()


def _per_site(snap: Snapshot) -> dict[str, tuple[int, int, int]]:
    return {
        site: (c.allocations, c.requested_bytes, c.allocated_bytes)
        for site, c in snap.allocations_by_site().items()
    }


@pytest.mark.parametrize(
    "scenario",
    ["steady", "netns-churn", "memcg-churn", "bpf-maps", "leak", "atomic-pressure", "chunk-churn"],
)
def test_round_trip_through_the_real_collector(scenario: str) -> None:
    backend = SimBackend(scenario, seed=3, clock=lambda: 0.0)
    backend.advance(3000)
    original = backend.snapshot()
    back = parse_metrics(_exposition(original), timestamp=original.timestamp)
    assert (back.backend, back.kernel) == (original.backend, original.kernel)
    assert _per_site(back) == _per_site(original)
    # Per key counts survive; bytes are exported per site only.
    assert {k: c.allocations for k, c in back.allocations.items()} == {
        k: c.allocations for k, c in original.allocations.items()
    }
    assert back.sites == original.sites
    assert back.size_histogram == original.size_histogram
    assert back.failed_size_histogram == original.failed_size_histogram
    assert dict(back.failures) == dict(original.failures)
    assert (back.chunk_creations, back.chunk_destructions) == (
        original.chunk_creations,
        original.chunk_destructions,
    )
    assert dict(back.dropped) == dict(original.dropped)
    assert original.kernel_stats is not None and back.kernel_stats is not None
    assert back.kernel_stats.meminfo_percpu_bytes == original.kernel_stats.meminfo_percpu_bytes
    stats, back_stats = original.kernel_stats.percpu_stats, back.kernel_stats.percpu_stats
    assert stats is not None and back_stats is not None
    assert (back_stats.info, back_stats.globals) == (stats.info, stats.globals)
    assert back_stats.chunks == ()  # exported as sums only
    assert back.fields_available == original.fields_available


def test_metrics_source_reports_an_unreachable_daemon() -> None:
    # Port 9 (discard) on loopback: nothing listens there on these machines.
    source = MetricsSource("127.0.0.1:9", timeout=2.0)
    with pytest.raises(PcpuError, match=r"cannot reach http://127.0.0.1:9/metrics: .*serve"):
        source.snapshot()
