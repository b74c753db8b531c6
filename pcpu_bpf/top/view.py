"""pcpu-top's view: rows and totals for the interval between two Snapshots.

Rates are differences of two cumulative Snapshots divided by the seconds between their
timestamps; nothing is ever cleared at the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcpu_bpf.model.snapshot import SiteRecord, Snapshot

SORT_KEYS = ("live-bytes", "allocs", "frees", "bytes", "fails")
DEFAULT_SORT = "live-bytes"


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
    untracked: bool = False  # the row of frees whose allocation tracing never saw


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
    profiler_percpu_bytes: int | None = None  # what the profiler's own maps hold


@dataclass(frozen=True, slots=True)
class View:
    """Everything one table shows: where the data came from, totals and unsorted rows."""

    backend: str
    kernel: str
    totals: Totals
    rows: tuple[Row, ...]


# The row of frees whose allocation tracing never saw (made before it began).
UNTRACKED_LABEL = "[untracked frees]"


def failure_label(atomic: bool, reserved: bool) -> str:
    """Row label of one failure class, e.g. "[failed atomic]"."""
    flags = [name for name, on in (("atomic", atomic), ("reserved", reserved)) if on]
    return "[failed " + ",".join(flags) + "]" if flags else "[failed]"


def increase(before: int, after: int) -> int:
    """How much a counter grew; one that went back was reset (a daemon restarted), so it
    grew by its new value, as Prometheus' rate() counts it. Never negative."""
    return after - before if after >= before else after


def _rate(delta: float, elapsed: float) -> float:
    return delta / elapsed if elapsed > 0 else 0.0


def build_view(before: Snapshot, after: Snapshot) -> View:
    """Rows and totals for the interval from ``before`` to ``after``."""
    elapsed = after.timestamp - before.timestamp
    rows: list[Row] = []
    for name, s1 in after.by_call_site.items():
        s0 = before.by_call_site.get(name, SiteRecord())
        allocs = increase(s0.allocations, s1.allocations)
        frees = increase(s0.frees, s1.frees)
        # A site with nothing live and nothing happening in the interval is history.
        if not (allocs or frees or s1.live_allocations):
            continue
        rows.append(
            Row(
                label=name,
                allocs_per_s=_rate(allocs, elapsed),
                frees_per_s=_rate(frees, elapsed),
                alloc_bytes_per_s=_rate(increase(s0.allocated_bytes, s1.allocated_bytes), elapsed),
                live_allocations=s1.live_allocations,
                live_bytes=s1.live_bytes,
                avg_size=s1.requested_bytes / s1.allocations if s1.allocations else None,
            )
        )
    untracked = increase(before.untracked_frees, after.untracked_frees)
    if untracked:
        rows.append(
            Row(
                label=UNTRACKED_LABEL,
                untracked=True,
                allocs_per_s=0.0,
                frees_per_s=_rate(untracked, elapsed),
                alloc_bytes_per_s=0.0,
            )
        )
    for (atomic, reserved), total in sorted(after.failures.items()):
        if total:
            delta = increase(before.failures.get((atomic, reserved), 0), total)
            rows.append(
                Row(
                    label=failure_label(atomic, reserved),
                    fails_per_s=_rate(delta, elapsed),
                    failures=total,
                    fail_class=(atomic, reserved),
                )
            )
    return View(after.backend, after.kernel, _totals(before, after, elapsed), tuple(rows))


def _totals(before: Snapshot, after: Snapshot, elapsed: float) -> Totals:
    t0, t1 = before.totals, after.totals
    frees = increase(t0.frees, t1.frees) + increase(before.untracked_frees, after.untracked_frees)
    ks = after.kernel_stats
    stats = ks.percpu_stats if ks is not None else None
    return Totals(
        elapsed=elapsed,
        meminfo_percpu_bytes=ks.meminfo_percpu_bytes if ks is not None else None,
        chunks=stats.globals.nr_chunks if stats is not None else None,
        kernel_live_allocations=stats.globals.nr_cur_alloc if stats is not None else None,
        chunk_creations=increase(before.chunk_creations, after.chunk_creations),
        chunk_destructions=increase(before.chunk_destructions, after.chunk_destructions),
        live_allocations=t1.live_allocations,
        live_bytes=t1.live_bytes,
        allocs_per_s=_rate(increase(t0.allocations, t1.allocations), elapsed),
        frees_per_s=_rate(frees, elapsed),
        alloc_bytes_per_s=_rate(increase(t0.allocated_bytes, t1.allocated_bytes), elapsed),
        fails_per_s=_rate(increase(before.total_failures, after.total_failures), elapsed),
        failures=after.total_failures,
        dropped=dict(after.dropped),
        profiler_percpu_bytes=after.profiler_percpu_bytes,
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
