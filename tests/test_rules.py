"""prometheus/rules.yml: promtool checks it and runs its tests; every alert is explained
and tested both ways; every query an operator is given names only what exists."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from ops_queries import (
    COOKBOOK,
    DASHBOARD,
    RULES,
    RULES_TEST,
    cookbook_queries,
    metric_names,
    panel_queries,
    rules,
    unknown_names,
)

ALERTS = [rule for rule in rules() if "alert" in rule]


@pytest.mark.needs_tool("promtool")
def test_promtool_checks_the_rules() -> None:
    run = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.needs_tool("promtool")
def test_promtool_runs_the_rule_tests() -> None:
    run = subprocess.run(
        ["promtool", "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


@pytest.mark.parametrize("alert", ALERTS, ids=lambda rule: rule["alert"])
def test_every_alert_is_explained(alert: dict) -> None:
    assert alert["alert"].startswith("Pcpu")
    assert alert["labels"]["severity"] in ("info", "warning", "critical")
    annotations = alert["annotations"]
    assert set(annotations) == {"summary", "description"}
    assert "{{ $labels.instance }}" in annotations["summary"]
    assert len(annotations["description"]) > 100


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", ())
    ]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{alert['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{alert['alert']} never silent"


def test_every_recording_rule_is_named_by_convention() -> None:
    for rule in rules():
        if "record" in rule:
            level, metric, operation = rule["record"].split(":")
            assert level.startswith("instance") and metric.startswith("pcpu_") and operation


def all_queries() -> list[tuple[str, str]]:
    found = [(f"rule {r.get('record') or r['alert']}", r["expr"]) for r in rules()]
    found += [(q.where, q.expr) for q in panel_queries(json.loads(DASHBOARD.read_text()))]
    found += [(q.where, q.expr) for q in cookbook_queries(COOKBOOK.read_text())]
    return found


@pytest.mark.parametrize(("where", "expr"), all_queries(), ids=[w for w, _ in all_queries()])
def test_queries_name_only_what_exists(where: str, expr: str) -> None:
    assert metric_names(expr), f"{where}: no metric in {expr}"
    assert unknown_names(expr) == set(), f"{where} reads what nothing exports"


def test_metric_names_reads_promql() -> None:
    expr = (
        'sum by (instance, call_site) (rate(pcpu_allocations_total{job=~"$job"}[5m])) '
        "/ on(instance) group_left(kernel) pcpu_exporter_info offset 1h > bool 0 "
        'and instance:pcpu_live_bytes:sum or vector(0) unless up{job="x"} '
        "* histogram_quantile(0.9, sum by (le) (rate(pcpu_allocation_size_bytes_bucket[1h:1m])))"
    )
    assert metric_names(expr) == {
        "pcpu_allocations_total",
        "pcpu_exporter_info",
        "instance:pcpu_live_bytes:sum",
        "up",
        "pcpu_allocation_size_bytes_bucket",
    }
