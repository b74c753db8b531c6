"""pcpu-top's output: a View as a terminal table (under 80 columns) or one JSON line."""

from __future__ import annotations

import json
from typing import Any

from pcpu_bpf.top.view import DEFAULT_SORT, Row, Totals, View, sort_rows
from pcpu_bpf.units import fit, human_bytes, human_int, human_rate

# bcc's CONTRIBUTING-SCRIPTS: under 80 columns, so a line never wraps on an 80-column tty.
WIDTH = 79

# Column headers and widths after the call-site column, which takes what is left.
_COLUMNS = (
    ("ALLOCS/s", 8),
    ("FREES/s", 7),
    ("LIVE", 6),
    ("LIVE BYTES", 10),
    ("AVG", 7),
    ("FAIL/s", 6),
)
SITE_WIDTH = WIDTH - sum(w + 1 for _, w in _COLUMNS)


def _cell(value: float | None, fmt: Any) -> str:
    return "-" if value is None else str(fmt(value))


def _maybe(value: int | None, fmt: Any) -> str:
    return "n/a" if value is None else str(fmt(value))


def header_lines(view: View, *, source: str, clock: str) -> list[str]:
    """The totals above the table, each line at most WIDTH characters."""
    t = view.totals
    lines = [
        f"{clock}  {source}  interval {t.elapsed:.2f}s  kernel {view.kernel}{_profiler(t)}",
        f"Percpu {_maybe(t.meminfo_percpu_bytes, human_bytes)} (meminfo)"
        f"  chunks {_maybe(t.chunks, str)} (+{t.chunk_creations} -{t.chunk_destructions})"
        f"  kernel live allocs {_maybe(t.kernel_live_allocations, str)}",
        f"traced live {t.live_allocations} ({human_bytes(t.live_bytes)})"
        f"  allocs/s {human_rate(t.allocs_per_s)}"
        f"  frees/s {human_rate(t.frees_per_s)}"
        f"  fails/s {human_rate(t.fails_per_s)} ({t.failures} total)",
    ]
    dropped = {reason: n for reason, n in sorted(t.dropped.items()) if n}
    if dropped:
        parts = ", ".join(f"{n} {reason}" for reason, n in dropped.items())
        lines.append(f"DROPPED (tracking table full): {parts}")
    return [fit_line(line) for line in lines]


def _profiler(t: Totals) -> str:
    if t.profiler_percpu_bytes is None:
        return ""
    return f"  own percpu {human_bytes(t.profiler_percpu_bytes)}"


def fit_line(line: str) -> str:
    """Cut a free-form line at WIDTH (the end is the least important part)."""
    return line if len(line) <= WIDTH else line[: WIDTH - 2] + ".."


def table_lines(rows: list[Row]) -> list[str]:
    """The column header and one line per row, in the given order."""
    head = f"{'CALL SITE':<{SITE_WIDTH}}" + "".join(f" {h:>{w}}" for h, w in _COLUMNS)
    out = [head]
    for r in rows:
        cells = (
            _cell(r.allocs_per_s, human_rate),
            _cell(r.frees_per_s, human_rate),
            _cell(r.live_allocations, human_int),
            _cell(r.live_bytes, human_bytes),
            _cell(r.avg_size, human_bytes),
            _cell(r.fails_per_s, human_rate),
        )
        line = f"{fit(r.label, SITE_WIDTH):<{SITE_WIDTH}}"
        line += "".join(f" {c:>{w}}" for c, (_, w) in zip(cells, _COLUMNS, strict=True))
        out.append(line)
    return out


def render_text(
    view: View,
    *,
    sort: str = DEFAULT_SORT,
    limit: int = 0,
    source: str = "",
    clock: str = "",
    max_lines: int | None = None,
) -> str:
    """The whole table: header, blank line, columns; ``limit`` 0 = all rows.

    ``max_lines`` caps the total height (a live view must fit the terminal).
    """
    head = header_lines(view, source=source or view.backend, clock=clock)
    rows = sort_rows(view.rows, sort)
    if limit:
        rows = rows[:limit]
    if max_lines is not None:
        rows = rows[: max(0, max_lines - len(head) - 2)]
    lines = table_lines(rows)
    if not view.rows:
        # A quiet host: say so rather than leave a bare column header.
        lines.append("(no percpu allocation or free traced yet)")
    return "\n".join([*head, "", *lines]) + "\n"


def _round(x: float) -> float:
    return round(x, 3)


def render_json(
    view: View, *, sort: str = DEFAULT_SORT, limit: int = 0, source: str = "", time: str = ""
) -> str:
    """One JSON document (one line) for the interval; failure classes are listed apart."""
    t = view.totals
    sites = [r for r in sort_rows(view.rows, sort) if r.fail_class is None and not r.untracked]
    if limit:
        sites = sites[:limit]
    doc: dict[str, Any] = {
        "time": time,
        "source": source or view.backend,
        "backend": view.backend,
        "kernel": view.kernel,
        "interval_seconds": _round(t.elapsed),
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
        "sites": [
            {
                "call_site": r.label,
                "allocations_per_second": _round(r.allocs_per_s or 0.0),
                "frees_per_second": _round(r.frees_per_s or 0.0),
                "allocated_bytes_per_second": _round(r.alloc_bytes_per_s or 0.0),
                "live_allocations": r.live_allocations,
                "live_bytes": r.live_bytes,
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
