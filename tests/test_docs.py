"""The documents stay true: docs/metrics.md lists exactly the catalog's families, and no
file cites a document that is not in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from exporters.catalog import (
    BPF_MAPS,
    CATALOG,
    CGROUPS,
    EXPORTER,
    MEMINFO,
    PERCPU_STATS,
    SNAPSHOT,
    TRACING,
    Family,
)

ROOT = Path(__file__).resolve().parents[1]
METRICS_MD = ROOT / "docs" / "metrics.md"
BEGIN, END = "<!-- families: begin -->", "<!-- families: end -->"

SECTIONS = (
    (TRACING, "From tracing (the BPF programs, or the simulator's events)"),
    (SNAPSHOT, "How fresh the kernel's own figures are"),
    (PERCPU_STATS, "From the kernel's percpu_stats (debugfs)"),
    (MEMINFO, "From /proc/meminfo, and the parts of its Percpu"),
    (BPF_MAPS, "Who holds it: BPF maps (bpf(2))"),
    (CGROUPS, "Who holds it: cgroups (the cgroup filesystem)"),
    (EXPORTER, "About the exporter itself"),
)


def _row(f: Family) -> str:
    labels = ", ".join(f"`{label}`" for label in f.labels) or "-"
    return (
        f"| `{f.name}` | {f.kind} | {labels} | {f.unit_text} | {', '.join(f.backends)} | {f.help} |"
    )


def family_tables() -> str:
    """The family tables of docs/metrics.md, rendered from the catalog."""
    out = []
    for part, title in SECTIONS:
        out += [f"### {title}", "", "| family | type | labels | unit | backends | meaning |"]
        out.append("| --- | --- | --- | --- | --- | --- |")
        out += [_row(f) for f in CATALOG if f.part == part]
        out.append("")
    return "\n".join(out)


def test_every_family_has_a_section() -> None:
    assert {f.part for f in CATALOG} == {part for part, _ in SECTIONS}


def test_metrics_md_lists_exactly_the_catalog(request: pytest.FixtureRequest) -> None:
    text = METRICS_MD.read_text()
    head, rest = text.split(BEGIN + "\n", 1)
    _, tail = rest.split(END, 1)
    want = family_tables()
    if request.config.getoption("--update-golden"):
        METRICS_MD.write_text(head + BEGIN + "\n" + want + END + tail)
        text = METRICS_MD.read_text()
    listed = re.findall(r"^\| `(pcpu_[a-z_]+)` \|", text, flags=re.M)
    assert sorted(listed) == sorted(f.name for f in CATALOG)
    assert rest.split(END, 1)[0] == want or request.config.getoption("--update-golden"), (
        "docs/metrics.md is out of date: review, then pytest --update-golden"
    )


def test_no_file_cites_a_document_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"DESIGN\.md|STYLE\.md|allocator-spec|\.\./shared/|\bspec \d|\bTV\d")
    cited = [
        name
        for name in tracked
        if (ROOT / name).is_file()
        and name != "tests/test_docs.py"
        and pattern.search((ROOT / name).read_text(errors="replace"))
    ]
    assert cited == []
