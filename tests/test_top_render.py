"""pcpu-top's pure formatting: units, truncation, rows, sorting, the table and JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.model.breakdown import Breakdown, BreakdownInputs, breakdown
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.snapshot import LiveAges, SiteKey, SiteRecord, SizeHistogram, Snapshot
from pcpu_bpf.top.render import (
    SITE_WIDTH,
    WIDTH,
    Layout,
    breakdown_line,
    columns,
    detail_of,
    part_bar,
    render_json,
    render_text,
    site_width,
    size_lines,
    sparkline,
)
from pcpu_bpf.top.view import (
    SORT_KEYS,
    UNTRACKED_LABEL,
    Row,
    build_view,
    failure_label,
    sort_rows,
)
from pcpu_bpf.units import fit, human_bytes, human_int, human_rate

FIXTURES = Path(__file__).parent / "fixtures"
BOOT_STATS = parse_percpu_stats((FIXTURES / "percpu_stats/boot.txt").read_text())


def snap(
    ts: float,
    sites: dict[tuple[str, bool, bool], tuple[int, ...]] | None = None,
    failures: dict[tuple[bool, bool], int] | None = None,
    *,
    untracked: int = 0,
    kernel_stats: KernelStats | None = None,
    dropped: dict[str, int] | None = None,
    chunks: tuple[int, int] = (0, 0),
    breakdown: Breakdown | None = None,
    ages: LiveAges | None = None,
    histogram: SizeHistogram | None = None,
) -> Snapshot:
    """A hand-made Snapshot: sites = key -> (allocations, requested, allocated, frees,
    freed bytes, live, live bytes)."""
    return Snapshot(
        backend="test",
        kernel="6.18.0-test",
        timestamp=ts,
        sites={SiteKey(*k): SiteRecord(*v) for k, v in (sites or {}).items()},
        untracked_frees=untracked,
        failures=failures or {},
        kernel_stats=kernel_stats,
        dropped=dropped or {"live_table_full": 0, "site_table_full": 0},
        chunk_creations=chunks[0],
        chunk_destructions=chunks[1],
        breakdown=breakdown,
        ages=ages,
        size_histogram=histogram or SizeHistogram(),
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (16, "16 B"),
        (1023, "1023 B"),
        (1023.6, "1.0 KiB"),  # rounding would print "1024 B"
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024 - 1, "10 KiB"),  # 9.999 KiB: no "10.0"
        (9.94 * 1024, "9.9 KiB"),
        (174 * 1024 + 100, "174 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),  # not "1024 KiB"
        (5 * 2**30, "5.0 GiB"),
        (123 * 2**40, "123 TiB"),
        (3 * 2**50, "3.0 PiB"),
        (5000 * 2**50, "5000 PiB"),  # the last unit keeps growing
    ],
)
def test_human_bytes(n: float, text: str) -> None:
    assert human_bytes(n) == text
    assert len(text) <= 10


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0, "0"),
        (0.04, "0.0"),
        (0.5, "0.5"),
        (42, "42.0"),
        (99.96, "100"),
        (1234.4, "1234"),
        (99_999.4, "99999"),
        (123_456, "123456"),
        (12_345_678, "12.3M"),
        (10**12, "1.0T"),
    ],
)
def test_human_rate(x: float, text: str) -> None:
    assert human_rate(x) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (7, "7"),
        (262_144, "262144"),
        (999_999, "999999"),
        (1_250_000, "1.2M"),
        (99_960_000, "100M"),
        (999_600_000, "1.0G"),
        (345 * 10**9, "345G"),
        (7 * 10**12, "7.0T"),
        (10**19, "10000P"),
    ],
)
def test_human_int(n: int, text: str) -> None:
    assert human_int(n) == text
    assert len(text) <= 6 or n >= 10**18


@pytest.mark.parametrize(
    ("text", "width", "out"),
    [
        ("mm_init", 29, "mm_init"),
        ("alloc_mem_cgroup_per_node_info", 29, "alloc_mem_cgro..per_node_info"),
        ("abcdefghij", 6, "ab..ij"),
        ("abcdefghij", 4, "abcd"),
        ("0xffffffff8123abcd", 18, "0xffffffff8123abcd"),
    ],
)
def test_fit_keeps_both_ends(text: str, width: int, out: str) -> None:
    assert fit(text, width) == out
    assert len(out) <= width


@pytest.mark.parametrize(
    ("atomic", "reserved", "label"),
    [
        (False, False, "[failed]"),
        (True, False, "[failed atomic]"),
        (False, True, "[failed reserved]"),
        (True, True, "[failed atomic,reserved]"),
    ],
)
def test_failure_label(atomic: bool, reserved: bool, label: str) -> None:
    assert failure_label(atomic, reserved) == label


BEFORE = snap(
    10.0,
    sites={
        ("mm_init", False, False): (100, 1600, 6400, 90, 5760, 10, 640),
        ("old_site", False, False): (5, 40, 80, 5, 80, 0, 0),
    },
    failures={(True, False): 3},
)
AFTER = snap(
    12.0,
    sites={
        ("mm_init", False, False): (120, 1920, 7680, 100, 6400, 24, 1536),
        ("mm_init", True, False): (4, 64, 256, 0, 0, 0, 0),
        ("old_site", False, False): (5, 40, 80, 5, 80, 0, 0),
        ("new_site", False, True): (2, 2000, 8000, 0, 0, 2, 8000),
    },
    untracked=6,
    failures={(True, False): 7, (False, False): 0, (False, True): 1},
    kernel_stats=KernelStats(BOOT_STATS, 1_409_024),
    chunks=(1, 0),
    breakdown=breakdown(BreakdownInputs(253 * 4096 * 2, 2, 768, 1160, BOOT_STATS)),
    ages=LiveAges(
        oldest_seconds={SiteKey("mm_init"): 4000.0, SiteKey("new_site", False, True): 30.0}
    ),
)


def test_build_view_rates_over_the_interval() -> None:
    view = build_view(BEFORE, AFTER)
    rows = {r.label: r for r in view.rows}
    # old_site: nothing live, nothing happened in the interval -> not shown.
    assert set(rows) == {
        "mm_init",
        "new_site",
        UNTRACKED_LABEL,
        "[failed atomic]",
        "[failed reserved]",
    }
    mm = rows["mm_init"]
    assert mm.allocs_per_s == pytest.approx(12.0)  # (124 - 100) / 2 s, atomic summed in
    assert mm.frees_per_s == pytest.approx(5.0)
    assert mm.alloc_bytes_per_s == pytest.approx((7680 + 256 - 6400) / 2)
    assert (mm.live_allocations, mm.live_bytes) == (24, 1536)
    assert mm.avg_size == pytest.approx((1920 + 64) / 124)
    assert mm.fails_per_s is None
    assert rows[UNTRACKED_LABEL].frees_per_s == pytest.approx(3.0)
    assert rows[UNTRACKED_LABEL].avg_size is None
    assert rows["[failed atomic]"].fails_per_s == pytest.approx(2.0)
    assert rows["[failed atomic]"].failures == 7
    assert rows["[failed reserved]"].fail_class == (False, True)
    t = view.totals
    assert t.elapsed == pytest.approx(2.0)
    assert t.allocs_per_s == pytest.approx((131 - 105) / 2)
    assert t.frees_per_s == pytest.approx((111 - 95) / 2)
    assert t.fails_per_s == pytest.approx(2.5)
    assert (t.live_allocations, t.live_bytes) == (26, 9536)
    assert (t.meminfo_percpu_bytes, t.chunks, t.kernel_live_allocations) == (1_409_024, 2, 1972)
    assert (t.chunk_creations, t.chunk_destructions, t.failures) == (1, 0, 8)


def test_build_view_without_elapsed_time_has_zero_rates() -> None:
    view = build_view(AFTER, AFTER)
    assert view.totals.allocs_per_s == 0.0
    assert all(r.allocs_per_s in (0.0, None) for r in view.rows)


FA, FR, UT = "[failed atomic]", "[failed reserved]", UNTRACKED_LABEL


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("live-bytes", ["new_site", "mm_init", UT, FA, FR]),
        ("allocs", ["mm_init", "new_site", UT, FA, FR]),
        ("frees", ["mm_init", UT, "new_site", FA, FR]),
        ("bytes", ["new_site", "mm_init", UT, FA, FR]),
        ("fails", [FA, FR, "new_site", "mm_init", UT]),
    ],
)
def test_sort_rows(sort: str, order: list[str]) -> None:
    assert [r.label for r in sort_rows(build_view(BEFORE, AFTER).rows, sort)] == order


def test_sort_rows_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="live-bytes"):
        sort_rows([], "size")


def test_sort_keys_are_designs() -> None:
    assert SORT_KEYS == ("live-bytes", "allocs", "frees", "bytes", "fails", "growth", "age")


def test_render_text_layout() -> None:
    text = render_text(build_view(BEFORE, AFTER), source="sim (leak)", clock="12:00:00")
    lines = text.splitlines()
    assert lines[0] == "12:00:00  sim (leak)  window 2.00s  kernel 6.18.0-test"
    assert lines[1] == "Percpu 1.3 MiB (meminfo)  chunks 2 (+1 -0)  kernel live allocs 1972"
    # The words would run past 80 columns with ", " and "parts: ": the short form.
    assert lines[2] == (
        "static 18% traced 0.1% untraced 27% own 1.1K empty 17% frag 38% explained 100%"
    )
    assert lines[3] == "traced live 26 (9.3 KiB)  allocs/s 13.0  frees/s 8.0  fails/s 2.5 (8 total)"
    assert lines[4] == ""
    assert lines[5].split() == [
        "CALL",
        "SITE",
        "ALLOCS/s",
        "FREES/s",
        "LIVE",
        "LIVE",
        "BYTES",
        "AVG",
        "AGE",
        "FAIL/s",
    ]
    assert lines[6].split() == ["new_site", "1.0", "0", "2", "7.8", "KiB", "1000", "B", "30s", "-"]
    assert lines[7].split() == ["mm_init", "12.0", "5.0", "24", "1.5", "KiB", "16", "B", "1h", "-"]
    assert lines[8].split() == ["[untracked", "frees]", "0", "3.0", "-", "-", "-", "-", "-"]
    assert lines[9].split() == ["[failed", "atomic]", "-", "-", "-", "-", "-", "-", "2.0"]
    assert all(len(line) <= WIDTH for line in lines)
    # Columns line up under their headers (right-aligned).
    assert {len(line) for line in lines[5:]} == {WIDTH}


def test_render_text_missing_kernel_stats_and_drops() -> None:
    after = snap(1.0, dropped={"live_table_full": 12, "site_table_full": 0})
    lines = render_text(build_view(snap(0.0), after), clock="t").splitlines()
    assert lines[1] == "Percpu n/a (meminfo)  chunks n/a (+0 -0)  kernel live allocs n/a"
    assert lines[2] == "parts: n/a, no meminfo"
    assert lines[4] == "DROPPED (tracking table full): 12 live_table_full"


def test_without_percpu_stats_the_header_names_the_absent_parts() -> None:
    parts = breakdown(BreakdownInputs(2 << 20, 2, 4096, 1160))  # no percpu_stats
    lines = render_text(build_view(snap(0.0), snap(1.0, breakdown=parts))).splitlines()
    assert lines[2] == "parts: traced 0.4% own 1.1K unexpl 99%, explained 0.4%"
    assert lines[4] == "no percpu_stats: static, resv, untraced, empty, frag absent (in unexpl)"


@pytest.mark.parametrize("resv", [0, 8192])
@pytest.mark.parametrize("scale", [1, 1000, 10**6])
def test_the_breakdown_line_always_fits(resv: int, scale: int) -> None:
    parts = {
        "static": 185560 * scale,
        "reserved": resv * scale,
        "traced_live": 12_000 * scale,
        "untraced_live": 290_000 * scale,
        "profiler": 1023 * 1024,
        "empty_pages": 1_800_000 * scale,
        "free_in_used_pages": 43_000 * scale,
        "unexplained": 3,
    }
    view = build_view(snap(0.0), snap(1.0, breakdown=Breakdown(parts)))
    line = breakdown_line(view.totals)
    assert len(line) <= WIDTH and "explained" in line, line


def test_part_bar_shows_every_part_in_proportion() -> None:
    b = Breakdown({"static": 7000, "traced_live": 2000, "profiler": 1, "empty_pages": 1000})
    bar, legend = part_bar(b)
    assert len(bar) == WIDTH and bar[0] == "[" and bar[-1] == "]"
    assert bar.count("S") > bar.count("T") > bar.count("E") > 0
    assert bar.count("P") == 1  # tiny, but there
    assert legend == "S static  T traced  P own  E empty"
    assert part_bar(Breakdown({"unexplained": 0})) == []


def test_sparkline_plain_and_on_a_terminal() -> None:
    assert sparkline(list(range(7)), 8, plain=True) == "_.-=+*#"
    assert sparkline([0, 30], 8, plain=False) == "▁█"
    flat = sparkline([5, 5, 5], 8, plain=True)
    assert len(flat) == 3 and len(set(flat)) == 1 and flat.isascii()
    assert sparkline(list(range(20)), 8, plain=True) == sparkline(
        list(range(12, 20)), 8, plain=True
    )
    assert sparkline([], 8, plain=True) == ""


@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("sort", SORT_KEYS)
@pytest.mark.parametrize("min_age", [False, True])
def test_every_mode_fits_80_columns(live: bool, sort: str, min_age: bool) -> None:
    detail = detail_of(live=live, sort=sort)
    cols = columns(detail, min_age=min_age)
    assert site_width(detail) + sum(c.width + 1 for c in cols) == WIDTH
    assert site_width(detail) >= 21
    assert [c.header for c in cols][-2:] == ["AGE", "FAIL/s"]
    assert ("TREND" in [c.header for c in cols]) == live
    assert ("OLD" in [c.header for c in cols]) == min_age


def test_growth_sorts_and_shows_what_was_added() -> None:
    view = build_view(BEFORE, AFTER)
    rows = {r.label: r for r in view.rows}
    assert rows["new_site"].growth == 8000 and rows["mm_init"].growth == 1536 - 640
    lines = render_text(view, sort="growth").splitlines()
    assert lines[5].split()[-3] == "GROWTH"
    assert lines[6].startswith("new_site") and "+7.8 KiB" in lines[6]


def test_min_age_counts_only_old_allocations() -> None:
    ages = LiveAges(
        oldest_seconds={SiteKey("mm_init"): 4000.0, SiteKey("new_site", False, True): 30.0},
        min_age=600.0,
        old_allocations={SiteKey("mm_init"): 3},
        old_bytes={SiteKey("mm_init"): 96},
    )
    after = snap(
        12.0,
        sites={
            ("mm_init", False, False): (120, 1920, 7680, 100, 6400, 24, 1536),
            ("new_site", False, True): (2, 2000, 8000, 0, 0, 2, 8000),
        },
        untracked=6,
        failures={(True, False): 7},
        ages=ages,
    )
    view = build_view(BEFORE, after, min_age=600.0)
    assert [(r.label, r.live_allocations, r.live_bytes) for r in view.rows] == [("mm_init", 3, 96)]
    lines = render_text(view).splitlines()
    assert "OLD: only allocations live 10m or more (--min-age)" in lines
    head = next(line for line in lines if line.startswith("CALL SITE")).split()
    assert head[4:7] == ["OLD", "OLD", "BYTES"]


def test_first_window_from_the_start_of_tracing_says_so() -> None:
    start = Snapshot(backend="bpf", kernel="6.18.0-test", timestamp=9.0)
    after = snap(12.0, sites={("mm_init", False, False): (6, 96, 192, 0, 0, 6, 192)})
    after = dataclasses.replace(after, tracking_start_time=1_790_000_000.0)
    view = build_view(start, after, from_start=True)
    lines = render_text(view, clock="c", layout=Layout(start_event="attach")).splitlines()
    assert lines[0] == "c  test  window 3.00s from attach  kernel 6.18.0-test"
    assert lines[3].startswith("traced live 6 (192 B) since ")


def test_sizes_draw_the_window_histogram() -> None:
    before = snap(0.0, histogram=SizeHistogram((1, 0, 0) + (0,) * 12, 4))
    after = snap(1.0, histogram=SizeHistogram((1, 10, 0, 5) + (0,) * 11, 4 + 80 + 160))
    lines = size_lines(build_view(before, after))
    assert lines[0].endswith("allocations by requested size, in the window")
    assert [line.split()[:3] for line in lines[1:]] == [
        ["<=", "8", "B"],
        ["<=", "16", "B"],
        ["<=", "32", "B"],
    ]
    bars = [line.count("#") for line in lines[1:]]
    assert bars[0] == WIDTH - 23 and bars[1] == 0 and 0 < bars[2] < bars[0]
    assert all(len(line) <= WIDTH for line in lines)
    text = render_text(build_view(before, after), layout=Layout(sizes=True))
    assert "CALL SITE" not in text and "allocations by requested size" in text


def test_render_text_huge_values_stay_under_80_columns() -> None:
    name = "a_very_long_kernel_function_name_that_goes_on_and_on"
    before = snap(0.0)
    after = snap(
        0.001,
        sites={(name, True, True): (10**9, 10**12, 10**15, 10**9 - 5, 10**15, 10**7, 10**15)},
        failures={(True, True): 10**9},
        kernel_stats=KernelStats(BOOT_STATS, 10**14),
        dropped={"live_table_full": 10**9, "site_table_full": 10**9},
        chunks=(10**6, 10**6),
    )
    text = render_text(build_view(before, after), source="x" * 100, clock="12:00:00")
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    assert fit(name, SITE_WIDTH) in text


@pytest.mark.parametrize(("limit", "rows"), [(0, 5), (1, 1), (3, 3), (99, 5)])
def test_render_text_limit(limit: int, rows: int) -> None:
    lines = render_text(build_view(BEFORE, AFTER), limit=limit).splitlines()
    assert len(lines) == 6 + rows


@pytest.mark.parametrize(("max_lines", "rows"), [(24, 5), (8, 2), (6, 0), (1, 0)])
def test_render_text_fits_terminal_height(max_lines: int, rows: int) -> None:
    lines = render_text(build_view(BEFORE, AFTER), max_lines=max_lines).splitlines()
    assert len(lines) == 6 + rows


def test_live_frame_fits_the_terminal_with_bar_and_help() -> None:
    layout = Layout(live=True, help_line="keys: q quit")
    lines = render_text(build_view(BEFORE, AFTER), max_lines=10, layout=layout).splitlines()
    assert len(lines) == 10 and lines[-1] == "keys: q quit"
    assert lines[4].startswith("[") and lines[5].startswith("S static")
    assert all(len(line) <= WIDTH for line in lines)


def test_render_json_document() -> None:
    line = render_json(build_view(BEFORE, AFTER), sort="allocs", limit=2, time="12:00:00")
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["interval_seconds"] == 2.0
    assert doc["totals"]["live_bytes"] == 9536
    assert doc["totals"]["meminfo_percpu_bytes"] == 1_409_024
    assert doc["totals"]["failures_total"] == 8
    assert [s["call_site"] for s in doc["sites"]] == ["mm_init", "new_site"]
    assert doc["sites"][0]["allocations_per_second"] == 12.0
    assert doc["failures"] == [
        {"atomic": False, "reserved": True, "failures_per_second": 0.5, "failures_total": 1},
        {"atomic": True, "reserved": False, "failures_per_second": 2.0, "failures_total": 7},
    ]


def test_row_defaults_render_as_dashes() -> None:
    view = build_view(snap(0.0), snap(1.0))
    assert view.rows == ()
    # A quiet host gets a line saying so under the column header.
    quiet = "FAIL/s\n(no percpu allocation or free traced yet)\n"
    assert render_text(view, clock="t").endswith(quiet)
    assert Row("x").live_bytes is None


def test_a_counter_that_went_back_is_a_reset_never_a_negative_rate() -> None:
    # A daemon restarted between two scrapes of `pcpu-top --from`: its counters restart.
    restarted = snap(
        14.0,
        sites={("mm_init", False, False): (6, 96, 384, 2, 128, 4, 256)},
        failures={(True, False): 1},
        untracked=1,
    )
    view = build_view(AFTER, restarted)
    mm = next(r for r in view.rows if r.label == "mm_init")
    assert mm.allocs_per_s == pytest.approx(6 / 2)  # grew by its new value, like rate()
    assert mm.frees_per_s == pytest.approx(2 / 2)
    t = view.totals
    assert t.allocs_per_s == pytest.approx(3.0) and t.frees_per_s == pytest.approx(1.5)
    assert t.fails_per_s == pytest.approx(0.5)
    rates = [getattr(r, f) for r in view.rows for f in ("allocs_per_s", "frees_per_s")]
    assert all(rate is None or rate >= 0 for rate in rates)


def test_an_unsettled_breakdown_is_marked_approximate() -> None:
    parts = Breakdown({"static": 900, "traced_live": 100, "unexplained": 0}, settled=False)
    line = breakdown_line(build_view(snap(0.0), snap(1.0, breakdown=parts)).totals)
    assert line.endswith("explained ~100%")
    doc = json.loads(render_json(build_view(snap(0.0), snap(1.0, breakdown=parts))))
    assert doc["breakdown"]["settled"] is False
