"""grafana/pcpu-bpf.json: made from grafana/dashboard.py (pytest --update-golden rewrites
it), laid out without overlaps, every query filtered by the job and instance variables."""

from __future__ import annotations

import json

import pytest
from ops_queries import DASHBOARD, load_dashboard_source


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_json_is_the_source_rendered(request: pytest.FixtureRequest) -> None:
    rendered = load_dashboard_source().render()
    if request.config.getoption("--update-golden"):
        DASHBOARD.write_text(rendered)
    assert DASHBOARD.read_text() == rendered, (
        "grafana/pcpu-bpf.json is out of date: --update-golden"
    )


def test_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert variables["datasource"]["query"] == "prometheus"
    assert "$job" in variables["instance"]["definition"]
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]


def test_panels_are_laid_out_without_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_queries_its_hosts_only() -> None:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert len(panels) >= 18
    for panel in panels:
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job", instance=~"$instance"' in target["expr"], panel["title"]
