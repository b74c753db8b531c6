"""The operator's PromQL against a real Prometheus scraping simulated daemons: every
recording rule, every dashboard panel and every cookbook query parses and returns data.

One Prometheus for the module, scraping one daemon per scenario every second, with the
rules' time compressed (prometheus/scale_rules.py) so hour-long windows fill in seconds.
Queries that need the live kernel's families run in test_ops_prometheus_bpf.py.
"""

from __future__ import annotations

import json
import sys
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
from prometheus_helpers import Prometheus, fast_expr, fast_rules, scrape_job

pytestmark = pytest.mark.needs_tool("prometheus")
ROOT = Path(__file__).resolve().parents[1]

# Growth (leak, memcg-churn), failures (atomic-pressure), chunks (chunk-churn), calm.
SCENARIOS = ("leak", "memcg-churn", "atomic-pressure", "chunk-churn", "steady")

PANELS = [q for q in panel_queries(json.loads(DASHBOARD.read_text())) if not needs_bpf(q.expr)]
COOKBOOK_QUERIES = [q for q in cookbook_queries(COOKBOOK.read_text()) if not needs_bpf(q.expr)]
RECORDED = [
    Query(f"rule {r['record']}", r["record"])
    for r in rules()
    if "record" in r and not needs_bpf(r["expr"])
]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    daemons = [Daemon("--backend", "sim", "--scenario", name) for name in SCENARIOS[1:]]
    # The leaking host runs simulated time 30 times faster (at a thirtieth of the pace, so
    # no more work): its allocations reach the older age bands within seconds.
    host = [sys.executable, str(ROOT / "scripts" / "fleet_host.py")]
    daemons.insert(0, Daemon("leak", "0", str(2000 / 30), "30", command=host))
    server = None
    try:
        for daemon in daemons:
            daemon.wait_ready()
        tmp = tmp_path_factory.mktemp("prometheus")
        server = Prometheus(
            tmp,
            [scrape_job("pcpu-bpf", [d.hostport for d in daemons])],
            rule_files=[fast_rules(tmp)],
        )
        server.wait_for('count(up{job="pcpu-bpf"} == 1) == 5')
        yield server
    finally:
        if server is not None:
            server.close()
        for daemon in daemons:
            daemon.close()


def test_the_queries_are_found() -> None:
    assert len(PANELS) >= 20 and len(COOKBOOK_QUERIES) >= 25 and len(RECORDED) >= 14


@pytest.mark.parametrize("query", RECORDED + PANELS + COOKBOOK_QUERIES, ids=lambda q: q.id)
def test_query_returns_data(prometheus: Prometheus, query: Query) -> None:
    prometheus.query_result(query.expr)  # as written: it parses
    # Time compressed like the rules', so windows of hours and days fill in seconds.
    prometheus.wait_for(fast_expr(query.expr), timeout=90)
