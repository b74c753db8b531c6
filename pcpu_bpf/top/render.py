"""pcpu-top's view: pure functions from two Snapshots to rows, a text table and JSON.

Rates are differences of two cumulative Snapshots divided by the seconds between their
timestamps; nothing is ever cleared at the source (STYLE.md item 7).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pcpu_bpf.model.snapshot import AllocCounts, SiteCounts, Snapshot
from pcpu_bpf.units import human_bytes

SORT_KEYS = ("live-bytes", "allocs", "frees", "bytes", "fails")
DEFAULT_SORT = "live-bytes"
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


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: a call site, or a failure class (the kernel's fail event has no site)."""

    label: str
    allocs_per_s: float | None = None
    frees_per_s: float | None = None
    alloc_bytes_per_s: float | None = None
    live_allocations: int | None = None
    live_bytes: int | None = None
    avg_size: float | None = None  # mean requested size of every allocation seen
    fails_per_s: float | None = None
    failures: int | None = None  # cumulative, for failure rows
    fail_class: tuple[bool, bool] | None = None  # (atomic, reserved) of a failure row


@dataclass(frozen=True, slots=True)
class Totals:
    """The header: the kernel's own numbers plus traced totals and rates over the interval."""

    elapsed: float
    meminfo_percpu_bytes: int | None
    chunks: int | None  # percpu_stats nr_chunks
    kernel_live_allocations: int | None  # percpu_stats nr_cur_alloc
    chunk_creations: int  # traced, in the interval
    chunk_destructions: int
    live_allocations: int  # traced
    live_bytes: int
    allocs_per_s: float
    frees_per_s: float
    alloc_bytes_per_s: float
    fails_per_s: float
    failures: int  # cumulative
    dropped: dict[str, int]  # cumulative, by reason


@dataclass(frozen=True, slots=True)
class View:
    """Everything one table shows: where the data came from, totals and unsorted rows."""

    backend: str
    kernel: str
    totals: Totals
    rows: tuple[Row, ...]


def human_rate(x: float) -> str:
    """A per-second rate in at most 6 characters: "0", "0.5", "42.0", "1234", "12.3k"."""
    if x == 0:
        return "0"
    if abs(x) < 99.95:
        return f"{x:.1f}"
    if abs(x) < 99_999.5:
        return f"{x:.0f}"
    return human_int(round(x))


def human_int(n: int) -> str:
    """A count in at most 6 characters: exact up to 999999, then "1.2M", "345G", "7.0T"."""
    if abs(n) < 1_000_000:
        return str(n)
    for scale, suffix in ((1e6, "M"), (1e9, "G"), (1e12, "T"), (1e15, "P")):
        v = abs(n) / scale
        if v < 99.95:
            return f"{n / scale:.1f}{suffix}"
        if v < 999.5 or suffix == "P":
            return f"{n / scale:.0f}{suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


def fit(text: str, width: int) -> str:
    """Shorten ``text`` to ``width`` keeping both ends: kernel names differ at either end."""
    if len(text) <= width:
        return text
    if width < 5:
        return text[:width]
    head = (width - 2 + 1) // 2
    tail = width - 2 - head
    return text[:head] + ".." + text[len(text) - tail :]


def failure_label(atomic: bool, reserved: bool) -> str:
    """Row label of one failure class, e.g. "[failed atomic]"."""
    flags = [name for name, on in (("atomic", atomic), ("reserved", reserved)) if on]
    return "[failed " + ",".join(flags) + "]" if flags else "[failed]"


def _rate(delta: float, elapsed: float) -> float:
    return delta / elapsed if elapsed > 0 else 0.0


def build_view(before: Snapshot, after: Snapshot) -> View:
    """Rows and totals for the interval from ``before`` to ``after``."""
    elapsed = after.timestamp - before.timestamp
    a_before, a_after = before.allocations_by_site(), after.allocations_by_site()
    rows: list[Row] = []
    for name in after.site_names():
        a0, a1 = a_before.get(name, AllocCounts()), a_after.get(name, AllocCounts())
        s0, s1 = before.sites.get(name, SiteCounts()), after.sites.get(name, SiteCounts())
        allocs = a1.allocations - a0.allocations
        frees = s1.frees - s0.frees
        # A site with nothing live and nothing happening in the interval is history.
        if not (allocs or frees or s1.live_allocations):
            continue
        rows.append(
            Row(
                label=name,
                allocs_per_s=_rate(allocs, elapsed),
                frees_per_s=_rate(frees, elapsed),
                alloc_bytes_per_s=_rate(a1.allocated_bytes - a0.allocated_bytes, elapsed),
                live_allocations=s1.live_allocations,
                live_bytes=s1.live_bytes,
                avg_size=a1.requested_bytes / a1.allocations if a1.allocations else None,
            )
        )
    for (atomic, reserved), total in sorted(after.failures.items()):
        if total:
            delta = total - before.failures.get((atomic, reserved), 0)
            rows.append(
                Row(
                    label=failure_label(atomic, reserved),
                    fails_per_s=_rate(delta, elapsed),
                    failures=total,
                    fail_class=(atomic, reserved),
                )
            )
    return View(after.backend, after.kernel, _totals(before, after, elapsed), tuple(rows))


def _sum_allocs(snap: Snapshot) -> AllocCounts:
    out = AllocCounts()
    for c in snap.allocations.values():
        out = AllocCounts(
            out.allocations + c.allocations,
            out.requested_bytes + c.requested_bytes,
            out.allocated_bytes + c.allocated_bytes,
        )
    return out


def _totals(before: Snapshot, after: Snapshot, elapsed: float) -> Totals:
    a0, a1 = _sum_allocs(before), _sum_allocs(after)
    frees0 = sum(s.frees for s in before.sites.values())
    frees1 = sum(s.frees for s in after.sites.values())
    ks = after.kernel_stats
    stats = ks.percpu_stats if ks is not None else None
    return Totals(
        elapsed=elapsed,
        meminfo_percpu_bytes=ks.meminfo_percpu_bytes if ks is not None else None,
        chunks=stats.globals.nr_chunks if stats is not None else None,
        kernel_live_allocations=stats.globals.nr_cur_alloc if stats is not None else None,
        chunk_creations=after.chunk_creations - before.chunk_creations,
        chunk_destructions=after.chunk_destructions - before.chunk_destructions,
        live_allocations=sum(s.live_allocations for s in after.sites.values()),
        live_bytes=sum(s.live_bytes for s in after.sites.values()),
        allocs_per_s=_rate(a1.allocations - a0.allocations, elapsed),
        frees_per_s=_rate(frees1 - frees0, elapsed),
        alloc_bytes_per_s=_rate(a1.allocated_bytes - a0.allocated_bytes, elapsed),
        fails_per_s=_rate(after.total_failures - before.total_failures, elapsed),
        failures=after.total_failures,
        dropped=dict(after.dropped),
    )


def _key(value: float | None) -> float:
    # Rows without the value (a failure row has no live bytes) sort after every real one.
    return -1.0 if value is None else value


_SORT_FIELD = {
    "live-bytes": "live_bytes",
    "allocs": "allocs_per_s",
    "frees": "frees_per_s",
    "bytes": "alloc_bytes_per_s",
    "fails": "fails_per_s",
}


def sort_rows(rows: tuple[Row, ...] | list[Row], sort: str) -> list[Row]:
    """Rows in descending order of ``sort`` (one of SORT_KEYS); ties by live bytes, allocs/s,
    failures, then name."""
    if sort not in _SORT_FIELD:
        raise ValueError(f"unknown sort key {sort!r}; choose one of {', '.join(SORT_KEYS)}")
    field = _SORT_FIELD[sort]
    return sorted(
        rows,
        key=lambda r: (
            -_key(getattr(r, field)),
            -_key(r.live_bytes),
            -_key(r.allocs_per_s),
            -_key(r.failures),
            r.label,
        ),
    )


def _cell(value: float | None, fmt: Any) -> str:
    return "-" if value is None else str(fmt(value))


def _maybe(value: int | None, fmt: Any) -> str:
    return "n/a" if value is None else str(fmt(value))


def header_lines(view: View, *, source: str, clock: str) -> list[str]:
    """The totals above the table, each line at most WIDTH characters."""
    t = view.totals
    lines = [
        f"{clock}  {source}  interval {t.elapsed:.2f}s  kernel {view.kernel}",
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
    sites = [r for r in sort_rows(view.rows, sort) if r.fail_class is None]
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
            "chunks": t.chunks,
            "kernel_live_allocations": t.kernel_live_allocations,
            "chunk_creations": t.chunk_creations,
            "chunk_destructions": t.chunk_destructions,
            "live_allocations": t.live_allocations,
            "live_bytes": t.live_bytes,
            "allocations_per_second": _round(t.allocs_per_s),
            "frees_per_second": _round(t.frees_per_s),
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
