"""The operator's PromQL against a real Prometheus scraping simulated daemons: every
recording rule, every dashboard panel and every cookbook query parses and returns data.

One Prometheus for the module, scraping one daemon per scenario every second, with the
rules' time compressed (prometheus/scale_rules.py) so hour-long windows fill in seconds.
Queries that need the live kernel's families run in test_ops_prometheus_bpf.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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

pytestmark = pytest.mark.needs_tool("prometheus")

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
    daemons = [Daemon("--backend", "sim", "--scenario", name) for name in SCENARIOS]
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
    prometheus.wait_for(query.expr, timeout=90)
