"""pcpu-top's output: a View as a terminal table (under 80 columns) or one JSON line.

The column budget (WIDTH 79, one space before each column; the call-site column takes
what is left):

| mode | columns after CALL SITE | CALL SITE |
| --- | --- | --- |
| default | ALLOCS/s 8, FREES/s 7, LIVE 6, LIVE BYTES 10, AVG 7, AGE 5, FAIL/s 6 | 23 |
| `--sort growth` | AVG gives way to GROWTH 9 | 21 |
| `--live` | AVG (or GROWTH) gives way to TREND 8, the sparkline | 22 |
| `--min-age` | LIVE and LIVE BYTES become OLD and OLD BYTES | as above |

The seventh slot is the one that changes with the mode. When some call site's owner
differs from it (a generic helper, with owners on), CALL SITE and the seventh slot give
way to CALL SITE 15 and OWNER 15: who allocated, and for whom. `--by owner` and
`--by cgroup` put the owner or the cgroup in the place of CALL SITE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pcpu_bpf.model.breakdown import PARTS, Breakdown
from pcpu_bpf.model.layout import SIZE_BUCKETS
from pcpu_bpf.top.view import DEFAULT_SORT, Row, Totals, View, sort_rows
from pcpu_bpf.units import (
    fit,
    human_age,
    human_bytes,
    human_int,
    human_rate,
    short_bytes,
)

# bcc's CONTRIBUTING-SCRIPTS: under 80 columns, so a line never wraps on an 80-column tty.
WIDTH = 79


@dataclass(frozen=True, slots=True)
class Column:
    """A column after the call site: its header, width and what it shows of a Row."""

    header: str
    width: int
    cell: str  # a name in _CELLS


_FIRST = (
    Column("ALLOCS/s", 8, "allocs"),
    Column("FREES/s", 7, "frees"),
    Column("LIVE", 6, "live"),
    Column("LIVE BYTES", 10, "live_bytes"),
)
_LAST = (Column("AGE", 5, "age"), Column("FAIL/s", 6, "fails"))
# The seventh slot, by mode.
DETAIL = {
    "avg": Column("AVG", 7, "avg"),
    "growth": Column("GROWTH", 9, "growth"),
    "trend": Column("TREND", 8, "trend"),
}
_OLD_HEADERS = {"LIVE": "OLD", "LIVE BYTES": "OLD BYTES"}


def detail_of(*, live: bool, sort: str) -> str:
    """Which column takes the seventh slot: TREND in --live, GROWTH when sorted by it."""
    if live:
        return "trend"
    return "growth" if sort == "growth" else "avg"


def columns(detail: str = "avg", *, min_age: bool = False) -> tuple[Column, ...]:
    """The columns after CALL SITE in one mode."""
    cols: tuple[Column, ...] = (*_FIRST, DETAIL[detail], *_LAST)
    if min_age:
        cols = tuple(Column(_OLD_HEADERS.get(c.header, c.header), c.width, c.cell) for c in cols)
    return cols


def site_width(detail: str = "avg") -> int:
    """Characters the call-site column gets in one mode."""
    return WIDTH - sum(c.width + 1 for c in columns(detail))


SITE_WIDTH = site_width()

# Sparkline levels, lowest first: block elements on a terminal, ASCII elsewhere.
SPARK_UNICODE = " ▁▂▃▄▅▆▇█"
SPARK_ASCII = " _.-=+*#"

# The parts as the header and the bar name them.
PART_NAMES = {
    "static": "static",
    "reserved": "resv",
    "traced_live": "traced",
    "untraced_live": "untraced",
    "profiler": "own",
    "empty_pages": "empty",
    "free_in_used_pages": "frag",
    "unexplained": "unexpl",
}
PART_LETTERS = {
    "static": "S",
    "reserved": "R",
    "traced_live": "T",
    "untraced_live": "U",
    "profiler": "P",
    "empty_pages": "E",
    "free_in_used_pages": "F",
    "unexplained": "?",
}


@dataclass(frozen=True, slots=True)
class Layout:
    """How a frame is drawn, beyond the View itself."""

    live: bool = False  # the live view: TREND column and the bar of the parts
    sizes: bool = False  # the size distribution instead of the call-site table
    plain: bool = True  # ASCII only: the output is not a terminal
    # Live bytes of each row (by label) over the last intervals, oldest first.
    trends: Mapping[str, Sequence[int]] = field(default_factory=dict)
    help_line: str | None = None  # the keys, under the table
    start_event: str = "start"  # what began the window of a fresh trace ("attach")
    label_header: str = "CALL SITE"  # what a row is: CALL SITE, OWNER or CGROUP


def _cell(value: float | None, fmt: Any) -> str:
    return "-" if value is None else str(fmt(value))


def _maybe(value: int | None, fmt: Any) -> str:
    return "n/a" if value is None else str(fmt(value))


def _signed_bytes(n: float) -> str:
    return ("+" if n > 0 else "") + human_bytes(n) if n >= 0 else "-" + human_bytes(-n)


def _clock_of(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def header_lines(view: View, *, source: str, clock: str, start_event: str = "start") -> list[str]:
    """The totals above the table, each line at most WIDTH characters."""
    t = view.totals
    window = f"window {t.elapsed:.2f}s" + (f" from {start_event}" if t.from_start else "")
    traced = f"traced live {t.live_allocations} ({human_bytes(t.live_bytes)})"
    if t.tracking_start_time is not None:
        traced += f" since {_clock_of(t.tracking_start_time)}"
    lines = [
        f"{clock}  {source}  {window}  kernel {view.kernel}",
        f"Percpu {_maybe(t.meminfo_percpu_bytes, human_bytes)} (meminfo)"
        f"  chunks {_maybe(t.chunks, str)} (+{t.chunk_creations} -{t.chunk_destructions})"
        f"  kernel live allocs {_maybe(t.kernel_live_allocations, str)}",
        breakdown_line(t),
        _spaced(
            traced,
            f"allocs/s {human_rate(t.allocs_per_s)}",
            f"frees/s {human_rate(t.frees_per_s)}",
            f"fails/s {human_rate(t.fails_per_s)}"
            + (f" ({t.failures} total)" if t.failures else ""),
        ),
    ]
    if t.missing_parts:
        absent = ", ".join(PART_NAMES[p] for p in t.missing_parts)
        lines.append(f"no percpu_stats: {absent} absent (in unexpl)")
    if t.min_age is not None:
        age = f"{t.min_age:g}s" if t.min_age < 60 else human_age(t.min_age)
        lines.append(f"OLD: only allocations live {age} or more (--min-age)")
    dropped = {reason: n for reason, n in sorted(t.dropped.items()) if n}
    if dropped:
        parts = ", ".join(f"{n} {reason}" for reason, n in dropped.items())
        lines.append(f"DROPPED (tracking table full): {parts}")
    return [fit_line(line) for line in lines]


def _spaced(*fields: str) -> str:
    """Fields two spaces apart, or one when that is what fits in WIDTH."""
    line = "  ".join(fields)
    return line if len(line) <= WIDTH else " ".join(fields)


def _share(n: int, total: int, *, exact: bool = True) -> str:
    """A share in percent; rounding never makes a part all or nothing when it is not."""
    pct = 100 * n / total if total else 0.0
    if exact and abs(pct) < 9.95:
        return f"{pct:.1f}%"
    if 0 < pct < 0.5:
        return "<1%"
    if 99.5 <= pct < 100:
        return "99%"
    return f"{pct:.0f}%"


def breakdown_line(t: Totals) -> str:
    """meminfo's Percpu in parts, each a share of it, the profiler's own in bytes, and how
    much is explained: in words when they fit in WIDTH, else in the bar's letters."""
    b = t.breakdown
    if b is None:
        own = t.profiler_percpu_bytes
        return "parts: n/a, no meminfo" + ("" if own is None else f" (own {short_bytes(own)})")
    shown = [(p, n) for p, n in b.parts.items() if n or p in ("traced_live", "profiler")]

    def words(names: Mapping[str, str], exact: bool) -> list[str]:
        return [
            f"{names[p]} {short_bytes(n) if p == 'profiler' else _share(n, b.total, exact=exact)}"
            for p, n in shown
        ]

    # "~": percpu events came in during the read, so the parts mix two moments.
    explained = f"explained {'' if b.settled else '~'}{_explained(b)}"
    for line in (
        f"parts: {' '.join(words(PART_NAMES, True))}, {explained}",
        f"{' '.join(words(PART_NAMES, True))} {explained}",
        f"{' '.join(words(PART_NAMES, False))} {explained}",
        f"{explained}: {' '.join(words(PART_LETTERS, False))}",
    ):
        if len(line) <= WIDTH:
            return line
    return fit_line(line)


def _explained(b: Breakdown) -> str:
    if b.parts.get("unexplained", 0) == 0:
        return "100%"
    pct = 100 * b.explained_share
    return f"{pct:.1f}%" if pct < 9.95 else f"{pct:.0f}%"


def part_bar(b: Breakdown, width: int = WIDTH) -> list[str]:
    """The parts as a bar of letters across ``width`` columns, and its legend (ASCII)."""
    inner = width - 2
    # Only what can be drawn: a negative part (a broken bound) takes no room.
    sizes = {p: n for p, n in b.parts.items() if n > 0}
    total = sum(sizes.values())
    if not total:
        return []
    exact = {p: n * inner / total for p, n in sizes.items()}
    cells = {p: int(x) for p, x in exact.items()}
    # Largest remainders get the columns left over, so the bar is exactly full.
    for p in sorted(exact, key=lambda p: exact[p] - cells[p], reverse=True)[
        : inner - sum(cells.values())
    ]:
        cells[p] += 1
    # Every part there is gets a column to be seen, taken from the largest.
    for p in [p for p in cells if cells[p] == 0]:
        cells[max(cells, key=cells.__getitem__)] -= 1
        cells[p] = 1
    bar = "".join(PART_LETTERS[p] * cells[p] for p in PARTS if p in cells)
    legend = "  ".join(f"{PART_LETTERS[p]} {PART_NAMES[p]}" for p in PARTS if p in cells)
    return [f"[{bar}]", fit_line(legend)]


def fit_line(line: str) -> str:
    """Cut a free-form line at WIDTH (the end is the least important part)."""
    return line if len(line) <= WIDTH else line[: WIDTH - 2] + ".."


def sparkline(values: Sequence[int], width: int, *, plain: bool) -> str:
    """``values`` (oldest first, the last ``width``) as levels between their min and max."""
    levels = SPARK_ASCII if plain else SPARK_UNICODE
    shown = list(values)[-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    top = len(levels) - 1
    if high == low:
        return levels[top // 2 or 1] * len(shown)
    return "".join(levels[1 + round((v - low) * (top - 1) / (high - low))] for v in shown)


def _cells(r: Row, layout: Layout, detail: str) -> dict[str, str]:
    return {
        "allocs": _cell(r.allocs_per_s, human_rate),
        "frees": _cell(r.frees_per_s, human_rate),
        "live": _cell(r.live_allocations, human_int),
        "live_bytes": _cell(r.live_bytes, human_bytes),
        "avg": _cell(r.avg_size, human_bytes),
        "growth": _cell(r.growth, _signed_bytes),
        "trend": sparkline(
            layout.trends.get(r.label, ()), DETAIL["trend"].width, plain=layout.plain
        )
        if detail == "trend"
        else "",
        "age": _cell(r.oldest_age, human_age),
        "fails": _cell(r.fails_per_s, human_rate),
    }


def table_lines(
    rows: list[Row], *, detail: str = "avg", layout: Layout | None = None, min_age: bool = False
) -> list[str]:
    """The column header and one line per row, in the given order."""
    layout = layout or Layout()
    cols = columns(detail, min_age=min_age)
    width = site_width(detail)
    site, owner = width, 0
    if any(r.owner is not None and r.owner != r.label for r in rows):
        # Who allocated and for whom, in the room of the call site and the seventh slot.
        cols = tuple(c for c in cols if c.header != DETAIL[detail].header)
        site = (width + DETAIL[detail].width) // 2
        owner = width + DETAIL[detail].width - site
        width = site + 1 + owner
    head = _label_cells(layout.label_header, "OWNER", site, owner)
    out = [f"{head:<{width}}" + "".join(f" {c.header:>{c.width}}" for c in cols)]
    for r in rows:
        cells = _cells(r, layout, detail)
        shown = "" if r.owner is None or r.owner == r.label else r.owner
        line = f"{_label_cells(r.label, shown, site, owner):<{width}}"
        line += "".join(f" {fit(cells[c.cell], c.width):>{c.width}}" for c in cols)
        out.append(line)
    return out


def _label_cells(label: str, owner: str, site: int, owner_width: int) -> str:
    """The row's first cells: its label, and its owner when the table has that column."""
    if not owner_width:
        return fit(label, site)
    return f"{fit(label, site):<{site}} {fit(owner, owner_width):<{owner_width}}"


def _bucket_label(i: int) -> str:
    return f"<= {human_bytes(SIZE_BUCKETS[i])}" if i < len(SIZE_BUCKETS) else "larger"


def size_lines(view: View, max_rows: int | None = None) -> list[str]:
    """The requested sizes of the window's allocations as a histogram of bars (ASCII)."""
    t = view.totals
    counts = list(t.sizes.counts)
    what = "in the window"
    if not any(counts):
        counts, what = list(t.sizes_since_start.counts), "since tracing began"
    head = f"{'SIZE':>12} {'ALLOCS':>8}  allocations by requested size, {what}"
    if not any(counts):
        return [fit_line(head), "(no percpu allocation traced yet)"]
    used = [i for i, n in enumerate(counts) if n]
    rows = range(used[0], used[-1] + 1)
    if max_rows is not None and len(rows) > max_rows:
        rows = range(used[0], used[0] + max(max_rows, 0))
    peak = max(counts)
    bar_width = WIDTH - 23
    out = [fit_line(head)]
    for i in rows:
        n = counts[i]
        bar = "#" * max(1 if n else 0, round(n * bar_width / peak))
        out.append(f"{_bucket_label(i):>12} {human_int(n):>8}  {bar}".rstrip())
    return out


def render_text(
    view: View,
    *,
    sort: str = DEFAULT_SORT,
    limit: int = 0,
    source: str = "",
    clock: str = "",
    max_lines: int | None = None,
    layout: Layout | None = None,
) -> str:
    """The whole frame: header, blank line, the table (or sizes); ``limit`` 0 = all rows.

    ``max_lines`` caps the total height (a live view must fit the terminal).
    """
    layout = layout or Layout()
    head = header_lines(
        view, source=source or view.backend, clock=clock, start_event=layout.start_event
    )
    if layout.live and view.totals.breakdown is not None:
        head += part_bar(view.totals.breakdown)
    foot = [fit_line(layout.help_line)] if layout.help_line else []
    room = None if max_lines is None else max(0, max_lines - len(head) - 2 - len(foot))
    if layout.sizes:
        body = size_lines(view, room)
        if room is not None:
            body = body[: room + 1]
    else:
        detail = detail_of(live=layout.live, sort=sort)
        rows = sort_rows(view.rows, sort)
        if limit:
            rows = rows[:limit]
        if room is not None:
            rows = rows[:room]
        body = table_lines(
            rows, detail=detail, layout=layout, min_age=view.totals.min_age is not None
        )
        if not view.rows:
            # A quiet host: say so rather than leave a bare column header.
            body.append(
                "(no allocation live that long)"
                if view.totals.min_age is not None
                else "(no percpu allocation or free traced yet)"
            )
    return "\n".join([*head, "", *body, *foot]) + "\n"


def _round(x: float) -> float:
    return round(x, 3)


def render_json(
    view: View,
    *,
    sort: str = DEFAULT_SORT,
    limit: int = 0,
    source: str = "",
    time: str = "",
    label_key: str = "call_site",
) -> str:
    """One JSON document (one line) for the interval; failure classes are listed apart.
    ``label_key``: what a row's label is (call_site, owner or cgroup)."""
    t = view.totals
    sites = [r for r in sort_rows(view.rows, sort) if r.fail_class is None and not r.untracked]
    if limit:
        sites = sites[:limit]
    b = t.breakdown
    doc: dict[str, Any] = {
        "time": time,
        "source": source or view.backend,
        "backend": view.backend,
        "kernel": view.kernel,
        "interval_seconds": _round(t.elapsed),
        "window_from_tracing_start": t.from_start,
        "tracking_start_time": t.tracking_start_time,
        "min_age_seconds": t.min_age,
        "totals": {
            "meminfo_percpu_bytes": t.meminfo_percpu_bytes,
            "profiler_percpu_bytes": t.profiler_percpu_bytes,
            "chunks": t.chunks,
            "kernel_live_allocations": t.kernel_live_allocations,
            "chunk_creations": t.chunk_creations,
            "chunk_destructions": t.chunk_destructions,
            "live_allocations": t.live_allocations,
            "live_bytes": t.live_bytes,
            "allocations_per_second": _round(t.allocs_per_s),
            "frees_per_second": _round(t.frees_per_s),
            "untracked_frees_per_second": _round(
                sum(r.frees_per_s or 0.0 for r in view.rows if r.untracked)
            ),
            "allocated_bytes_per_second": _round(t.alloc_bytes_per_s),
            "failures_per_second": _round(t.fails_per_s),
            "failures_total": t.failures,
            "dropped_total": t.dropped,
        },
        "breakdown": None
        if b is None
        else {
            "parts": dict(b.parts),
            "explained_share": _round(b.explained_share),
            "settled": b.settled,
            "absent_parts": list(t.missing_parts),
            "violations": list(b.violations),
        },
        "sites": [
            {
                label_key: r.label,
                **({"owner": r.owner} if r.owner is not None else {}),
                "allocations_per_second": _round(r.allocs_per_s or 0.0),
                "frees_per_second": _round(r.frees_per_s or 0.0),
                "allocated_bytes_per_second": _round(r.alloc_bytes_per_s or 0.0),
                "live_allocations": r.live_allocations,
                "live_bytes": r.live_bytes,
                "live_bytes_growth": r.growth,
                "oldest_age_seconds": None if r.oldest_age is None else _round(r.oldest_age),
                "average_size_bytes": None if r.avg_size is None else _round(r.avg_size),
            }
            for r in sites
        ],
        "failures": [
            {
                "atomic": r.fail_class[0],
                "reserved": r.fail_class[1],
                "failures_per_second": _round(r.fails_per_s or 0.0),
                "failures_total": r.failures,
            }
            for r in view.rows
            if r.fail_class is not None
        ],
    }
    return json.dumps(doc, separators=(",", ":"))
