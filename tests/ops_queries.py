"""The operator-facing PromQL in one place: the rules, the dashboard's panels and the
cookbook's queries, with the metric names each uses (not a test).

Adding a family to the catalog makes it usable in all three at once; a query naming a
metric nothing exports fails tests/test_rules.py, whichever file it is in.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from exporters.catalog import CATALOG, HISTOGRAM, Family

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "grafana" / "pcpu-bpf.json"
DASHBOARD_SOURCE = ROOT / "grafana" / "dashboard.py"
COOKBOOK = ROOT / "docs" / "promql.md"

# Series that are not in the catalog but that every scrape of the daemon has.
OTHER_SERIES = ("up", "scrape_duration_seconds", "scrape_samples_scraped")
OTHER_PREFIXES = ("process_",)  # prometheus_client's process collector

# What a Grafana variable stands for when a test runs a panel's query.
GRAFANA_VARIABLES = {
    "${job}": "pcpu-bpf",
    "$job": "pcpu-bpf",
    "${instance}": ".+",
    "$instance": ".+",
    "$__rate_interval": "30s",
    "$__range": "5m",
}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def family_of(name: str) -> Family | None:
    """The catalog family a series name belongs to (histogram suffixes included)."""
    for family in CATALOG:
        if name == family.name:
            return family
        if family.kind == HISTOGRAM and name in (
            family.name + suffix for suffix in ("_bucket", "_sum", "_count")
        ):
            return family
    return None


def needs_bpf(expr: str) -> bool:
    """True when the query reads a family only the live kernel's backend fills."""
    families = (family_of(name) for name in metric_names(expr))
    return any(f is not None and "sim" not in f.backends for f in families)


def rules() -> list[dict[str, Any]]:
    """Every rule of rules.yml, recording and alerting."""
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def unknown_names(expr: str) -> set[str]:
    """Names in ``expr`` that nothing exports or records."""
    known = recorded_names() | set(OTHER_SERIES)
    return {
        name
        for name in metric_names(expr)
        if family_of(name) is None and name not in known and not name.startswith(OTHER_PREFIXES)
    }


def grafana(expr: str) -> str:
    """A panel's query with the dashboard's variables filled in."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def load_dashboard_source() -> ModuleType:
    """grafana/dashboard.py, the source of grafana/pcpu-bpf.json."""
    spec = importlib.util.spec_from_file_location("pcpu_dashboard", DASHBOARD_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Query:
    """One query an operator is given: where it is, and its PromQL."""

    where: str
    expr: str

    @property
    def id(self) -> str:
        return self.where


def panel_queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    """Every target of every panel, variables filled in."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            yield Query(f"panel {panel['title']!r} {target['refId']}", grafana(target["expr"]))


def cookbook_queries(text: str) -> Iterator[Query]:
    """Every ```promql block of docs/promql.md, under the question it answers."""
    question = "?"
    for block in re.finditer(r"^### ([^\n]+)$|^```promql\n(.*?)^```", text, flags=re.M | re.S):
        if block.group(1):
            question = block.group(1)
            continue
        yield Query(f"cookbook {question!r}", block.group(2).strip())
