"""The source of grafana/pcpu-bpf.json: rows of panels, each a title, its queries and a unit.

`python3 grafana/dashboard.py > grafana/pcpu-bpf.json` writes the dashboard (the test
suite checks the two agree; `pytest --update-golden` rewrites it). Adding a panel is one
entry in ROWS: tests/test_ops_prometheus.py then runs its queries against a real
Prometheus scraping the daemon. Every query selects `job=~"$job", instance=~"$instance"`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"
WIDTH = 24  # Grafana's grid is 24 columns wide


@dataclass(frozen=True)
class Target:
    """One query of a panel, with its legend."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel: what it shows and how wide it is (of 24 columns)."""

    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat, table, heatmap, bargauge
    width: int = 12
    height: int = 8
    stack: bool = False


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out left to right."""

    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


ROWS: tuple[Row, ...] = (
    Row(
        "Percpu memory",
        (
            Panel(
                "Where Percpu goes",
                "meminfo's Percpu (all units) in parts that add up to it: static and reserved "
                "areas, traced live allocations, allocations live from before tracing began, "
                "the profiler's own maps, empty populated pages, free space in used pages, and "
                "what no part explains (docs/metrics.md has the arithmetic).",
                (
                    Target(
                        f"sum by (instance, part) (pcpu_memory_bytes{{{SEL}}})",
                        "{{part}} {{instance}}",
                    ),
                ),
                unit="bytes",
                width=16,
                stack=True,
            ),
            Panel(
                "Share of Percpu explained",
                "The share of Percpu some part places (instance:pcpu_explained:ratio): 1 "
                "wherever the kernel's percpu_stats is readable.",
                (Target(f"instance:pcpu_explained:ratio{{{SEL}}}", "{{instance}}"),),
                unit="percentunit",
                kind="stat",
                width=8,
            ),
            Panel(
                "Which part grows",
                "Growth of each part of Percpu in bytes per second, least squares over the "
                "last hour (instance_part:pcpu_memory_bytes:deriv1h).",
                (
                    Target(
                        f"instance_part:pcpu_memory_bytes:deriv1h{{{SEL}}}",
                        "{{part}} {{instance}}",
                    ),
                ),
                unit="Bps",
                width=16,
            ),
            Panel(
                "Share of Percpu in traced live allocations",
                "Traced live bytes over meminfo's Percpu (instance:pcpu_traced_live:ratio); "
                "the rest is placed by the parts beside.",
                (Target(f"instance:pcpu_traced_live:ratio{{{SEL}}}", "{{instance}}"),),
                unit="percentunit",
                kind="stat",
                width=8,
            ),
        ),
    ),
    Row(
        "Age of live allocations",
        (
            Panel(
                "Live bytes by age",
                "Traced live bytes by how long they have been live: under a minute, to an "
                "hour, to a day, older. A leak moves bytes into the older bands.",
                (
                    Target(
                        f"sum by (instance, age) (pcpu_live_by_age_bytes{{{SEL}}})",
                        "{{age}} {{instance}}",
                    ),
                ),
                unit="bytes",
                stack=True,
            ),
            Panel(
                "Oldest live allocation by call site",
                "The age of each call site's oldest live traced allocation: one that keeps "
                "getting older while its site grows is a leak's mark.",
                (
                    Target(
                        "topk(10, max by (instance, call_site) "
                        f"(pcpu_live_oldest_age_seconds{{{SEL}}}))",
                        "{{call_site}} {{instance}}",
                    ),
                ),
                unit="s",
            ),
        ),
    ),
    Row(
        "Call sites",
        (
            Panel(
                "Top call sites by live bytes",
                "The kernel functions holding the most live percpu memory (all units).",
                (
                    Target(
                        f"topk(10, instance_call_site:pcpu_live_bytes:sum{{{SEL}}})",
                        "{{call_site}} {{instance}}",
                    ),
                ),
                unit="bytes",
            ),
            Panel(
                "Top call sites by allocation rate",
                "Percpu allocations per second, by the kernel function that asked.",
                (
                    Target(
                        f"topk(10, instance_call_site:pcpu_allocations:rate5m{{{SEL}}})",
                        "{{call_site}} {{instance}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Fastest-growing call sites",
                "Growth of live bytes per second over the last hour (least squares). Churn "
                "moves it up and down; a leak keeps it above zero.",
                (
                    Target(
                        f"topk(10, instance_call_site:pcpu_live_bytes:deriv1h{{{SEL}}})",
                        "{{call_site}} {{instance}}",
                    ),
                ),
                unit="Bps",
            ),
            Panel(
                "Call sites whose floor rises",
                "How fast the lowest level of the last 30 minutes rises: what the "
                "PcpuCallSiteGrowing alert watches (over 300 B/s for two hours).",
                (
                    Target(
                        f"topk(10, instance_call_site:pcpu_live_bytes_floor:deriv1h{{{SEL}}})",
                        "{{call_site}} {{instance}}",
                    ),
                ),
                unit="Bps",
            ),
            Panel(
                "Call sites now",
                "Live bytes, live allocations and allocations per second by call site.",
                (
                    Target(
                        f"sort_desc(sum by (instance, call_site) (pcpu_live_bytes{{{SEL}}}))",
                        instant=True,
                    ),
                    Target(
                        f"sum by (instance, call_site) (pcpu_live_allocations{{{SEL}}})",
                        instant=True,
                    ),
                    Target(
                        "sum by (instance, call_site) "
                        f"(rate(pcpu_allocations_total{{{SEL}}}[{RATE}]))",
                        instant=True,
                    ),
                ),
                kind="table",
                width=16,
            ),
            Panel(
                "Requested sizes",
                "Allocations per second by requested size (one unit, log2 buckets).",
                (
                    Target(
                        f"sum by (le) (rate(pcpu_allocation_size_bytes_bucket{{{SEL}}}[{RATE}]))",
                        "{{le}}",
                    ),
                ),
                kind="heatmap",
                width=8,
            ),
        ),
    ),
    Row(
        "Owners the kernel names",
        (
            Panel(
                "BPF tools holding percpu memory",
                "Percpu memory (all units) of the host's BPF maps, by the programs using "
                "them: security agents' and tracers' per-CPU maps. Needs the daemon to "
                "hold CAP_SYS_ADMIN (an opt-in in the unit).",
                (
                    Target(
                        "topk(10, sum by (instance, program) "
                        f"(pcpu_bpf_map_percpu_bytes{{{SEL}}}))",
                        "{{program}} {{instance}}",
                    ),
                ),
                unit="bytes",
                width=16,
            ),
            Panel(
                "Dying cgroups",
                "Removed cgroups the kernel still holds (each keeps its per-CPU "
                "statistics): a count that only grows is the zombie memory cgroup problem.",
                (
                    Target(
                        f"max by (instance, hierarchy) (pcpu_cgroup_dying_descendants{{{SEL}}})",
                        "{{hierarchy}} {{instance}}",
                    ),
                ),
                width=8,
            ),
        ),
    ),
    Row(
        "Failures",
        (
            Panel(
                "Allocation failures",
                "Failed percpu allocations per second; atomic ones mean the pool of empty "
                "populated pages ran dry.",
                (
                    Target(
                        "sum by (instance, atomic) "
                        f"(rate(pcpu_allocation_failures_total{{{SEL}}}[{RATE}]))",
                        "atomic={{atomic}} {{instance}}",
                    ),
                ),
                unit="ops",
                width=16,
            ),
            Panel(
                "Sizes that failed",
                "Failed requests by requested size (one unit) over the dashboard's range.",
                (
                    Target(
                        "sum by (le) "
                        f"(increase(pcpu_failed_allocation_size_bytes_bucket{{{SEL}}}[$__range]))",
                        "{{le}}",
                        instant=True,
                    ),
                ),
                kind="bargauge",
                width=8,
            ),
        ),
    ),
    Row(
        "Chunks and fragmentation",
        (
            Panel(
                "Chunks",
                "Percpu chunks now and at most (each costs a unit per possible CPU); "
                "creations and destructions per second show churn.",
                (
                    Target(f"pcpu_stats_chunks{{{SEL}}}", "chunks {{instance}}"),
                    Target(
                        f"instance:pcpu_chunk_creations:rate5m{{{SEL}}}",
                        "created/s {{instance}}",
                    ),
                    Target(
                        f"instance:pcpu_chunk_destructions:rate5m{{{SEL}}}",
                        "destroyed/s {{instance}}",
                    ),
                ),
            ),
            Panel(
                "Free and fragmented space, one unit",
                "The kernel's chunk figures for one unit: free address space, the part "
                "stranded between allocations, and the largest contiguous free area.",
                (
                    Target(f"pcpu_stats_free_unit_bytes{{{SEL}}}", "free {{instance}}"),
                    Target(f"pcpu_stats_fragmented_unit_bytes{{{SEL}}}", "fragmented {{instance}}"),
                    Target(
                        f"pcpu_stats_contig_free_unit_bytes{{{SEL}}}",
                        "largest free area {{instance}}",
                    ),
                ),
                unit="bytes",
            ),
        ),
    ),
    Row(
        "The profiler",
        (
            Panel(
                "Daemons up",
                "Targets of the job that answer (1) or not (0).",
                (Target(f"up{{{SEL}}}", "{{instance}}"),),
                kind="stat",
                width=6,
            ),
            Panel(
                "Parts served",
                "pcpu_collector_success: 1 when the part was served by the last scrape.",
                (Target(f"pcpu_collector_success{{{SEL}}}", "{{collector}} {{instance}}"),),
                kind="stat",
                width=6,
            ),
            Panel(
                "Tracking tables",
                "Fill of the BPF tables (at 1, new allocations are dropped) and drops per "
                "second by reason.",
                (
                    Target(
                        f"instance_map:pcpu_bpf_map_fill:ratio{{{SEL}}}", "{{map}} {{instance}}"
                    ),
                    Target(
                        "sum by (instance, reason) "
                        f"(rate(pcpu_tracking_dropped_total{{{SEL}}}[{RATE}]))",
                        "dropped/s {{reason}} {{instance}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "BPF programs' CPU",
                "Share of one CPU spent in each BPF program (needs "
                "kernel.bpf_stats_enabled=1), and runs per second.",
                (
                    Target(
                        "sum by (instance, program) "
                        f"(rate(pcpu_bpf_program_run_seconds_total{{{SEL}}}[{RATE}]))",
                        "{{program}} {{instance}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "BPF program runs and missed events",
                "Runs per second of each program, and events the kernel did not deliver "
                "because another BPF program was running on that CPU.",
                (
                    Target(
                        "sum by (instance, program) "
                        f"(rate(pcpu_bpf_program_runs_total{{{SEL}}}[{RATE}]))",
                        "runs/s {{program}} {{instance}}",
                    ),
                    Target(
                        "sum by (instance, program) "
                        f"(rate(pcpu_bpf_program_recursion_misses_total{{{SEL}}}[{RATE}]))",
                        "missed/s {{program}} {{instance}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "The daemon's CPU",
                "CPU of pcpu-bpf serve itself (share of one CPU): reading the maps and "
                "serving scrapes. The BPF programs' own CPU is beside it.",
                (Target(f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "CPU {{instance}}"),),
                unit="percentunit",
            ),
            Panel(
                "The profiler's own percpu memory",
                "Percpu bytes (all units) held by pcpu-bpf's own BPF maps and programs: part "
                "of meminfo's Percpu.",
                (Target(f"pcpu_profiler_percpu_bytes{{{SEL}}}", "profiler {{instance}}"),),
                unit="bytes",
                kind="stat",
                width=6,
            ),
            Panel(
                "Tracing since",
                "When the counters began: a restart that adopts the pinned maps keeps it.",
                (Target(f"pcpu_tracking_start_time_seconds{{{SEL}}} * 1000", "{{instance}}"),),
                unit="dateTimeAsIso",
                kind="stat",
                width=6,
            ),
            Panel(
                "The daemon's memory",
                "Resident memory of pcpu-bpf serve.",
                (Target(f"process_resident_memory_bytes{{{SEL}}}", "resident {{instance}}"),),
                unit="bytes",
            ),
        ),
    ),
)


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for index, target in enumerate(panel.targets):
        entry: dict[str, Any] = {
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "expr": target.expr,
            "refId": chr(ord("A") + index),
        }
        if target.legend:
            entry["legendFormat"] = target.legend
        if target.instant or panel.kind == "table":
            entry.update(instant=True, range=False, format="table")
        targets.append(entry)
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": targets,
    }
    if panel.kind == "timeseries":
        stacking = {"mode": "normal" if panel.stack else "none"}
        out["fieldConfig"]["defaults"]["custom"] = {"stacking": stacking}
        out["options"] = {"legend": {"displayMode": "table", "placement": "right"}}
    if panel.kind == "table":
        out["transformations"] = [{"id": "merge", "options": {}}]
    return out


def _variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    """The dashboard, as Grafana's JSON model."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1},
                "panels": [],
            }
        )
        next_id, y, x, tallest = next_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, tallest = 0, y + tallest, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id, x, tallest = next_id + 1, x + panel.width, max(tallest, panel.height)
        y += tallest
    return {
        "uid": "pcpu-bpf",
        "title": "pcpu-bpf: percpu memory",
        "description": "Where the kernel's percpu memory goes, from pcpu-bpf serve "
        "(docs/metrics.md, docs/promql.md).",
        "tags": ["pcpu-bpf", "kernel", "memory"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable("job", "label_values(pcpu_exporter_info, job)", "Job"),
                _variable(
                    "instance", 'label_values(pcpu_exporter_info{job=~"$job"}, instance)', "Host"
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    """The dashboard file's text."""
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
