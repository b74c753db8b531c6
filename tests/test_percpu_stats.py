from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.kernel.percpu_stats import (
    parse_percpu_stats,
    read_percpu_stats,
    render_percpu_stats,
)
from pcpu_bpf.model.kernel_stats import (
    CHUNK_FIRST,
    CHUNK_NORMAL,
    CHUNK_RESERVED,
    CHUNK_SIDELINED,
    CHUNK_TO_DEPOPULATE,
    AllocationInfo,
    ChunkStats,
    ChunkTotals,
    GlobalStats,
    PercpuStats,
)

FIXTURES = Path(__file__).parent / "fixtures" / "percpu_stats"
SAMPLES = sorted(p.stem for p in FIXTURES.glob("*.txt"))
DEBUGFS = Path("/sys/kernel/debug")


def sample(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


@pytest.mark.parametrize("name", SAMPLES)
def test_render_of_parse_is_the_kernel_text(name):
    text = sample(name)
    assert render_percpu_stats(parse_percpu_stats(text)) == text


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("boot", [CHUNK_FIRST, CHUNK_NORMAL]),
        ("sidelined", [CHUNK_FIRST, CHUNK_SIDELINED, CHUNK_NORMAL]),
        (
            "all-kinds",
            [CHUNK_RESERVED, CHUNK_FIRST, CHUNK_TO_DEPOPULATE, CHUNK_SIDELINED, CHUNK_NORMAL],
        ),
        ("live-6.18", [CHUNK_FIRST, CHUNK_NORMAL]),
    ],
)
def test_chunk_kinds_in_print_order(name, kinds):
    assert [c.kind for c in parse_percpu_stats(sample(name)).chunks] == kinds


def test_boot_sample_values():
    stats = parse_percpu_stats(sample("boot"))
    assert stats.info == AllocationInfo(1048576, 185560, 0, 31528, 2097152, 2097152)
    assert stats.globals == GlobalStats(23777, 21805, 1972, 7092, 2, 2, 4, 8192, 43)
    assert stats.chunks[1] == ChunkStats(
        CHUNK_NORMAL, 1446, 8192, 43, 14621, 803540, 786048, 17492, 2088, 4, 32, 2288
    )


def test_negative_empty_pop_pages():
    assert parse_percpu_stats(sample("all-kinds")).globals.empty_pop_pages == -3


@pytest.mark.parametrize(
    ("name", "free", "frag", "max_frag", "contig"),
    [
        ("boot", 16 + 803540, 16 + 17492, 2088, 786048),
        ("sidelined", 16 + 950196 + 1048576, 16 + 264196, 97968, 1048576),
        ("all-kinds", 4096 + 0 + 40960 + 40960 + 65016, 32768 * 2, 32768, 65016),
    ],
)
def test_summaries(name, free, frag, max_frag, contig):
    stats = parse_percpu_stats(sample(name))
    assert stats.totals == ChunkTotals(free, frag, max_frag, contig)


def test_summaries_without_chunks():
    stats = parse_percpu_stats(sample("boot"))
    assert PercpuStats.of(stats.info, stats.globals, ()).totals == ChunkTotals(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("label", "edit"),
    [
        ("trailing spaces", lambda t: t.replace("\n", "  \n")),
        ("CRLF", lambda t: t.replace("\n", "\r\n")),
        ("no final blank line", lambda t: t.rstrip("\n") + "\n"),
        ("no final newline", lambda t: t.rstrip("\n")),
        ("extra blank lines at the end", lambda t: t + "\n\n"),
    ],
)
def test_tolerated_variations(label, edit):
    text = sample("sidelined")
    assert parse_percpu_stats(edit(text)) == parse_percpu_stats(text)


def _replace_line(lineno: int, new: str | None):
    """Replace (or with None delete) the 1-based line ``lineno``."""

    def edit(text: str) -> str:
        lines = text.split("\n")
        if new is None:
            del lines[lineno - 1]
        else:
            lines[lineno - 1] = new
        return "\n".join(lines)

    return edit


# boot.txt: line 10 is the blank after Allocation Info, 25 "Chunk: <- First Chunk",
# 29 first_bit, 37 the blank after the first chunk, 38 "Chunk:".
CORRUPT = [
    ("empty", lambda t: "", 1, "''"),
    ("wrong title", lambda t: t.replace("Percpu Memory", "Percpu Mem"), 1, "Percpu Mem"),
    ("truncated in info", lambda t: t[: t.index("  dyn_size")], 6, "reserved_size"),
    ("truncated mid chunk", lambda t: t[: t.index("  sum_frag")], 31, "contig_bytes"),
    ("truncated before chunks", lambda t: t[: t.index("Chunk: <-")], 24, "-" * 40),
    ("non-numeric value", lambda t: t.replace("14621", "14x21"), 42, "14x21"),
    ("empty value", _replace_line(29, "  first_bit           :"), 29, "first_bit"),
    ("plus sign", _replace_line(29, "  first_bit           :        +3028"), 29, "+3028"),
    ("missing field", _replace_line(29, None), 29, "free_bytes"),
    ("renamed field", _replace_line(29, "  first_bits          :         3028"), 29, "first_bits"),
    ("unknown header", _replace_line(38, "Chunk (isolated):"), 38, "Chunk (isolated):"),
    ("missing blank between chunks", _replace_line(37, None), 37, "Chunk:"),
    ("missing blank between sections", _replace_line(10, None), 10, "Global Stats:"),
    ("extra field", lambda t: t.replace("Chunk:\n", "  spare  :  1\nChunk:\n"), 38, "spare"),
    ("stray text at the end", lambda t: t + "garbage\n", 51, "garbage"),
    ("no rule", lambda t: t.replace("-" * 40 + "\n  nr_alloc", "  nr_alloc", 1), 12, "nr_alloc"),
    ("non-ascii digits", lambda t: t.replace("14621", "١٤٦٢١"), 42, "١٤٦٢١"),
]


@pytest.mark.parametrize(
    ("label", "edit", "lineno", "content"), CORRUPT, ids=[c[0] for c in CORRUPT]
)
def test_corrupt_text_names_the_line(label, edit, lineno, content):
    with pytest.raises(StatsParseError) as info:
        parse_percpu_stats(edit(sample("boot")))
    message = str(info.value)
    assert "\n" not in message
    assert f"line {lineno}:" in message
    assert content in message


def test_read_from_a_debugfs_root(tmp_path):
    (tmp_path / "percpu_stats").write_text(sample("all-kinds"))
    assert read_percpu_stats(tmp_path) == parse_percpu_stats(sample("all-kinds"))
    assert read_percpu_stats(str(tmp_path)) == parse_percpu_stats(sample("all-kinds"))


def test_read_propagates_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_percpu_stats(tmp_path)


def test_read_undecodable_bytes_is_a_parse_error(tmp_path):
    (tmp_path / "percpu_stats").write_bytes(b"Percpu Memory \xff\n")
    with pytest.raises(StatsParseError, match="line 1:"):
        read_percpu_stats(tmp_path)


_counts = st.integers(min_value=0, max_value=2**63 - 1)
_signed = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_kinds = st.sampled_from(
    [CHUNK_RESERVED, CHUNK_FIRST, CHUNK_TO_DEPOPULATE, CHUNK_SIDELINED, CHUNK_NORMAL]
)
_chunk = st.builds(ChunkStats, _kinds, *[_signed] * 11)
_stats = st.builds(
    PercpuStats.of,
    st.builds(AllocationInfo, *[_counts] * 6),
    st.builds(GlobalStats, *[_counts] * 8, _signed),
    st.lists(_chunk, min_size=1, max_size=6).map(tuple),
)


@given(_stats)
def test_render_parse_roundtrip_is_lossless(stats):
    text = render_percpu_stats(stats)
    assert parse_percpu_stats(text) == stats
    assert render_percpu_stats(parse_percpu_stats(text)) == text


@pytest.mark.privileged
def test_live_kernel_file_roundtrips():
    path = DEBUGFS / "percpu_stats"
    text = path.read_text()  # read once: the live numbers move between reads
    stats = parse_percpu_stats(text)
    assert render_percpu_stats(stats) == text
    assert CHUNK_FIRST in [c.kind for c in stats.chunks]
    assert read_percpu_stats(DEBUGFS).info == stats.info
