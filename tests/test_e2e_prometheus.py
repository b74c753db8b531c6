"""End to end: `pcpu-bpf serve` scraped by a real Prometheus server, read over its HTTP API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon, Samples, parse
from prometheus_helpers import Prometheus, scrape_job
from waiting import wait_until

pytestmark = pytest.mark.needs_tool("prometheus")

SITE = "bpf_map_alloc_percpu"


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Prometheus]]:
    daemon = Daemon(*request.param)
    prometheus = None
    try:
        daemon.wait_ready()
        prometheus = Prometheus(tmp_path, [scrape_job("pcpu", [daemon.hostport])])
        yield daemon, prometheus
    finally:
        if prometheus is not None:
            prometheus.close()
        daemon.close()


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.mark.parametrize("stack", [("--backend", "sim", "--scenario", "steady")], indirect=True)
def test_prometheus_scrapes_sim_daemon(stack: tuple[Daemon, Prometheus]) -> None:
    daemon, prom = stack
    prom.wait_for("pcpu_allocations_total", bool)
    # The simulated workload keeps running: bracket Prometheus' latest sample between two
    # reads of the daemon's own /metrics, one before that sample was taken, one after.
    before = parse(daemon.scrape())
    # A sample taken a second later: scrapes within half a second share one snapshot.
    prom.wait_for(f"timestamp(pcpu_exporter_info) > {time.time() + 1.0}", bool)
    scraped = prom.query("pcpu_allocations_total")
    after = parse(daemon.scrape())
    low, high = series(before, "pcpu_allocations_total"), series(after, "pcpu_allocations_total")
    assert set(low) <= set(scraped) <= set(high)
    for labels, (_, value) in scraped.items():
        assert low.get(labels, 0) <= value <= high[labels]
    assert sum(high.values()) > sum(low.values())  # the numbers move
    up = prom.query("up")
    assert [v for _, v in up.values()] == [1.0]
    info = prom.query("pcpu_exporter_info")
    assert [dict(labels)["backend"] for labels in info] == ["sim"]
    # Static series agree exactly.
    unit = prom.query("pcpu_stats_unit_size_bytes")
    assert [v for _, v in unit.values()] == list(
        series(after, "pcpu_stats_unit_size_bytes").values()
    )


@pytest.mark.privileged
@pytest.mark.parametrize("stack", [("--backend", "bpf")], indirect=True)
def test_prometheus_sees_exact_bpf_map_allocations(stack: tuple[Daemon, Prometheus]) -> None:
    daemon, prom = stack
    prom.wait_for("pcpu_exporter_info", bool)
    # Other processes may create per-CPU maps too (their allocations only ever add):
    # one clean attempt out of three proves the count exact.
    for _ in range(3):
        got = map_workload_through_prometheus(daemon, prom)
        if got == EXPECTED:
            break
    assert got == EXPECTED


ENTRIES, VALUE_SIZE = 37, 1000  # 1000 bytes: a size nothing else on the machine asks for
EXPECTED = {
    "allocations": ENTRIES,
    "requested": ENTRIES * VALUE_SIZE,
    "live": ENTRIES,
    "daemon_agrees": True,
    "frees": ENTRIES,
    "live_after_close": 0,
}


def map_workload_through_prometheus(daemon: Daemon, prom: Prometheus) -> dict[str, object]:
    """Create and close one per-CPU array; the increases Prometheus saw, per counter."""
    from pcpu_bpf.bpf import syscalls

    def total(name: str) -> float:
        result = prom.query(f'sum({name}{{call_site="{SITE}"}}) or vector(0)')
        return sum(v for _, v in result.values())

    def sample_after(t: float) -> None:
        prom.wait_for(f"timestamp(pcpu_exporter_info) > {t}", bool)

    names = (
        "pcpu_allocations_total",
        "pcpu_requested_bytes_total",
        "pcpu_live_allocations",
        "pcpu_frees_total",
    )
    sample_after(time.time())
    base = {name: total(name) for name in names}
    fd = syscalls.create_percpu_array(VALUE_SIZE, ENTRIES, "pcpu_e2e")
    try:
        created = time.time()
        sample_after(created + 1.0)  # a scrape well after the allocations happened
        seen = {name: total(name) for name in names}
        own = parse(daemon.scrape())
    finally:
        syscalls.close(fd)
    own_allocs = sum(
        v
        for labels, v in series(own, "pcpu_allocations_total").items()
        if dict(labels)["call_site"] == SITE
    )
    # The kernel frees a closed map's memory from a kworker, within about a second.
    wait_until(
        lambda: total("pcpu_frees_total") >= base["pcpu_frees_total"] + ENTRIES,
        interval=0.2,
        what=f"Prometheus to see the {ENTRIES} frees",
    )
    sample_after(time.time() + 0.5)
    return {
        "allocations": seen["pcpu_allocations_total"] - base["pcpu_allocations_total"],
        "requested": seen["pcpu_requested_bytes_total"] - base["pcpu_requested_bytes_total"],
        "live": seen["pcpu_live_allocations"] - base["pcpu_live_allocations"],
        "daemon_agrees": own_allocs == seen["pcpu_allocations_total"],
        "frees": total("pcpu_frees_total") - base["pcpu_frees_total"],
        "live_after_close": total("pcpu_live_allocations") - base["pcpu_live_allocations"],
    }
