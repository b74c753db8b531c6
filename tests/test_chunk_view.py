"""pcpu-top --chunks: each chunk as a row of pages, golden on the scenarios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli_top import FakeClock, Recorder

from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.cli.top import _utf8_terminal, main
from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.model.chunk_map import ChunkMap, ChunkPicture
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.sim.scenarios import SCENARIOS
from pcpu_bpf.top.chunks import (
    BLOCK_GLYPHS,
    NO_PAGES_LIVE,
    cell_state,
    chunk_lines,
    pages_per_cell,
    render_chunks,
)
from pcpu_bpf.top.render import WIDTH
from pcpu_bpf.top.run import TopDeps

GOLDEN = Path(__file__).parent / "fixtures" / "chunks"
STATS = Path(__file__).parent / "fixtures" / "percpu_stats"
OPS = 4000


def check_golden(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    assert text == path.read_text(), "chunk view changed: review, then --update-golden"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_golden_chunk_view(scenario: str, update_golden: bool) -> None:
    backend = SimBackend(scenario, seed=1, clock=lambda: 0.0)
    backend.advance(OPS)
    text = render_chunks(backend.snapshot(), source=backend.label, clock="12:00:00")
    check_golden(f"{scenario}.txt", text, update_golden)
    assert max(map(len, text.splitlines())) <= WIDTH
    assert text.isascii()


def test_every_golden_file_has_a_scenario() -> None:
    names = {p.stem for p in GOLDEN.glob("*.txt")}
    live = {"live-6.18-stats", "live-6.18-traced", "replay-chunk-churn-small"}
    assert names - live == set(SCENARIOS)


def test_from_percpu_stats_alone_the_figures_and_why_no_pages(update_golden: bool) -> None:
    stats = parse_percpu_stats((STATS / "live-6.18.txt").read_text())
    snap = Snapshot(backend="bpf", kernel="6.18.0", timestamp=0.0, kernel_stats=KernelStats(stats))
    text = render_chunks(snap, source="bpf", clock="12:00:00")
    check_golden("live-6.18-stats.txt", text, update_golden)
    assert NO_PAGES_LIVE.split()[0] in text and "drawn 0" in text
    assert max(map(len, text.splitlines())) <= WIDTH


def test_no_figures_at_all_says_so() -> None:
    snap = Snapshot(backend="remote", kernel="6.18.0", timestamp=0.0)
    assert "no chunk figures" in render_chunks(snap, source="remote", clock="")


def test_cells_scale_and_summarise_their_pages() -> None:
    big = ChunkPicture("normal", 1 << 21, 0, 0, pages="f" * 512)
    assert pages_per_cell((big,)) == 16
    assert pages_per_cell((ChunkPicture("first", 31528, 0, 0, pages="ffff"),)) == 1
    assert [cell_state(p) for p in ("ffff", "uuuu", "eeee", "uuee", "ffee", "fuuu", "pppp")] == [
        "f",
        "u",
        "e",
        "e",
        "p",
        "p",
        "p",
    ]


def test_block_glyphs_for_a_utf8_terminal() -> None:
    m = ChunkMap((ChunkPicture("normal", 65536, 8192, 3, 4096, 0xFFFFE8FFFFC00000, "ufpe"),))
    lines = chunk_lines(m, glyphs=BLOCK_GLYPHS)
    assert lines[-1].endswith("·█▒░") and "ffffc00000" in lines[-1] and "50%" in lines[-1]

    class Tty:
        encoding = "UTF-8"

        def isatty(self) -> bool:
            return True

    class Pipe(Tty):
        def isatty(self) -> bool:
            return False

    assert _utf8_terminal(Tty()) and not _utf8_terminal(Pipe())


@pytest.fixture
def deps() -> TopDeps:
    clock = FakeClock()
    return TopDeps(
        constructors=Recorder(clock),
        sleep=clock.sleep,
        clock_text=lambda: "12:00:00",
        terminal_lines=lambda: None,
        iso_time=lambda: "2026-11-30T12:00:00+00:00",
    )


def test_pcpu_top_chunks_text_and_json(deps: TopDeps) -> None:
    runner = CliRunner()
    args = ["--chunks", "--scenario", "chunk-churn", "1", "2"]
    result = runner.invoke(main, args, obj=deps)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("12:00:00  sim (chunk-churn)") == 2
    assert "CHUNK             FREE  LARGEST FRAG ALLOCS PAGES" in result.stdout
    result = runner.invoke(main, ["--json", *args], obj=deps)
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 2 and docs[0]["chunk_map"]["chunks"][0]["pages"]
    assert {"kind", "free_bytes", "largest_free", "fragmentation"} <= set(
        docs[0]["chunk_map"]["chunks"][0]
    )
