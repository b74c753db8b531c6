"""`pcpu-bpf replay` through CliRunner: the summary, --json, what-ifs, the chunk view, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from trace_text import simulated_trace, trace_text

from pcpu_bpf.cli import main
from pcpu_bpf.sim.geometry import CONFIG_S

GOLDEN = Path(__file__).parent / "fixtures" / "chunks"


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.txt"
    events = simulated_trace("chunk-churn", CONFIG_S, seed=7, before=1000, during=1500)
    path.write_text(trace_text(events))
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["replay", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_summary(trace: Path) -> None:
    code, out, _ = run(str(trace), "--recorded-on", "small")
    assert code == 0
    assert "tracefs trace, real pointers" in out
    assert "checked " in out and ": 0 differ" in out
    assert "pointers differ 0" in out
    assert "final percpu_stats (replayed):\nPercpu Memory Statistics" in out
    assert max(map(len, out.splitlines()[1:])) <= 79  # the first is the file name


def test_json_is_one_object_with_the_figures(trace: Path) -> None:
    code, out, _ = run(str(trace), "--recorded-on", "small", "--json")
    assert code == 0 and out.count("\n") == 1
    doc = json.loads(out)
    assert {"events", "checked", "differ", "chunks_created", "chunks_destroyed"} <= set(doc)
    assert doc["differ"] == 0 and doc["checked"] > 300
    assert doc["chunks_created"] == doc["recorded"]["chunks_created"] > 0


def test_what_if_rows_and_json(trace: Path) -> None:
    code, out, _ = run(str(trace), "--recorded-on", "small", "--geometry", "unit_size=128K")
    assert code == 0
    assert max(map(len, out.splitlines()[1:])) <= 79
    assert "what if: 4 CPUs (4 units), unit 128 KiB" in out
    assert "recorded  baseline   what-if" in out
    code, out, _ = run(str(trace), "--recorded-on", "small", "--cpus", "16", "--json")
    doc = json.loads(out)
    assert doc["what_if"]["geometry"]["nr_possible_cpus"] == 16
    assert doc["chunks_created"] == doc["what_if"]["chunks_created"]
    assert doc["what_if"]["chunks_created"] == doc["baseline"]["chunks_created"]


def test_the_chunk_view_of_a_replay_is_golden(trace: Path, update_golden: bool) -> None:
    code, out, _ = run(str(trace), "--recorded-on", "small", "--chunks")
    assert code == 0
    view = out[out.index("chunks at the end") :]
    path = GOLDEN / "replay-chunk-churn-small.txt"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(view)
    assert view == path.read_text(), "chunk view changed: review, then --update-golden"
    assert max(map(len, view.splitlines())) <= 79


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("  x-1 [000] ..... 1.0: percpu_free_percpu: base_addr=zz off=0 ptr=1\n", (), "line 1:"),
        ('{"type": "header", "format": "pcpu-bpf-recording", "version": 9}\n', (), "version 9"),
        ("", ("--geometry", "unit_size=3K"), "impossible geometry"),
        ("", ("--geometry", "nodes=2"), "unknown geometry field 'nodes'"),
        ("", ("--recorded-on", "default,cpus=x"), "cpus='x': not a number"),
    ],
)
def test_bad_input_is_one_line_and_nothing_else(
    tmp_path: Path, content: str, args: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    code, out, err = run(str(path), *args)
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and message in err and err.count("\n") == 1


def test_a_missing_file(tmp_path: Path) -> None:
    code, out, err = run(str(tmp_path / "none.txt"))
    assert (code, out) == (1, "") and "cannot read" in err and err.count("\n") == 1
