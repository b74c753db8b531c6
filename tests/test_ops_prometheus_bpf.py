"""The operator's queries that need the live kernel's families (the BPF programs' cost),
against a real Prometheus scraping `pcpu-bpf serve --backend bpf`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon
from ops_queries import (
    COOKBOOK,
    DASHBOARD,
    Query,
    cookbook_queries,
    needs_bpf,
    panel_queries,
    rules,
)
from prometheus_helpers import Prometheus, fast_rules, scrape_job

from pcpu_bpf.bpf import syscalls

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("prometheus")]

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
QUERIES = (
    [q for q in panel_queries(json.loads(DASHBOARD.read_text())) if needs_bpf(q.expr)]
    + [q for q in cookbook_queries(COOKBOOK.read_text()) if needs_bpf(q.expr)]
    + [
        Query(f"rule {r['record']}", r["record"])
        for r in rules()
        if "record" in r and needs_bpf(r["expr"])
    ]
)


def percpu_events(stop: threading.Event) -> None:
    """Percpu allocations and frees a few times a second: a quiet host may make none, and
    the programs' cost per event needs events."""
    while not stop.wait(0.2):
        syscalls.close(syscalls.create_percpu_array(8, 4, "pcpu_ops_bpf"))


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")  # the programs' run counts and time need it
    daemon = Daemon("--backend", "bpf")
    server = None
    stop = threading.Event()
    events = threading.Thread(target=percpu_events, args=(stop,), daemon=True)
    events.start()
    try:
        daemon.wait_ready()
        tmp = tmp_path_factory.mktemp("prometheus")
        server = Prometheus(
            tmp, [scrape_job("pcpu-bpf", [daemon.hostport])], rule_files=[fast_rules(tmp)]
        )
        yield server
    finally:
        stop.set()
        events.join()
        if server is not None:
            server.close()
        daemon.close()
        BPF_STATS.write_text(old)


def test_the_queries_are_found() -> None:
    assert len(QUERIES) >= 6


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.id)
def test_query_returns_data(prometheus: Prometheus, query: Query) -> None:
    prometheus.wait_for(query.expr, timeout=90)
