"""pcpu-top's view: rows and totals for the interval between two Snapshots.

Rates are differences of two cumulative Snapshots divided by the seconds between their
timestamps; nothing is ever cleared at the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pcpu_bpf.model.breakdown import NEEDS_PERCPU_STATS, Breakdown
from pcpu_bpf.model.snapshot import LiveAges, SiteKey, SiteRecord, SizeHistogram, Snapshot

# What a row is: a call site (with the owner behind it, where that differs), an owner
# (every call site that allocated for it), or the cgroup of the allocating tasks.
GROUPINGS = ("call_site", "owner", "cgroup")
DEFAULT_GROUPING = "call_site"
# A row's key: its label, and the owner behind a call site (None in the other groupings).
GroupKey = tuple[str, str | None]

SORT_KEYS = ("live-bytes", "allocs", "frees", "bytes", "fails", "growth", "age")
DEFAULT_SORT = "live-bytes"


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: a call site, or a failure class (the kernel's fail event has no site)."""

    label: str
    owner: str | None = None  # for a call-site row: whom it allocated for
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
    oldest_age: float | None = None  # seconds the oldest live allocation has lived
    growth: int | None = None  # live bytes added over the window (negative: shrank)


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
    breakdown: Breakdown | None = None  # meminfo's Percpu in parts
    # Parts of the breakdown absent because the kernel gave no percpu_stats.
    missing_parts: tuple[str, ...] = ()
    tracking_start_time: float | None = None  # seconds since the epoch
    # The window began when tracing did (the first table of a fresh trace): what was
    # live before is untraced, and the header says so.
    from_start: bool = False
    min_age: float | None = None  # LIVE counts only allocations at least this old
    sizes: SizeHistogram = field(default_factory=SizeHistogram)  # requested, in the window
    sizes_since_start: SizeHistogram = field(default_factory=SizeHistogram)


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


def _group_of(key: SiteKey, by: str) -> GroupKey:
    return (key.call_site, key.owner) if by == "call_site" else (key.owner, None)


def groups(snap: Snapshot, by: str) -> dict[GroupKey, SiteRecord]:
    """The Snapshot's site records summed per row of grouping ``by`` (GROUPINGS)."""
    if by == "cgroup":
        return {(name, None): r for name, r in (snap.cgroups or {}).items()}
    out: dict[GroupKey, SiteRecord] = {}
    for key, record in snap.sites.items():
        g = _group_of(key, by)
        out[g] = out[g] + record if g in out else record
    return out


def _ages_by(
    ages: LiveAges | None, by: str
) -> tuple[dict[GroupKey, float], dict[GroupKey, int], dict[GroupKey, int]]:
    """Oldest age, and allocations and bytes at least min_age old, by row (none by cgroup:
    the live table's ages are per site)."""
    oldest: dict[GroupKey, float] = {}
    old_count: dict[GroupKey, int] = {}
    old_bytes: dict[GroupKey, int] = {}
    if ages is not None and by != "cgroup":
        for key, age in ages.oldest_seconds.items():
            g = _group_of(key, by)
            oldest[g] = max(oldest.get(g, 0.0), age)
        for key, n in ages.old_allocations.items():
            g = _group_of(key, by)
            old_count[g] = old_count.get(g, 0) + n
        for key, n in ages.old_bytes.items():
            g = _group_of(key, by)
            old_bytes[g] = old_bytes.get(g, 0) + n
    return oldest, old_count, old_bytes


def build_view(
    before: Snapshot,
    after: Snapshot,
    *,
    from_start: bool = False,
    min_age: float | None = None,
    by: str = DEFAULT_GROUPING,
) -> View:
    """Rows and totals for the interval from ``before`` to ``after``.

    ``from_start``: ``before`` is the moment tracing began. ``min_age``: rows count only
    live allocations at least that many seconds old (``after.ages`` must have been
    walked for it), and sites without any, and rows of events, are left out. ``by``: what
    a row is (GROUPINGS).
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; choose one of {', '.join(GROUPINGS)}")
    elapsed = after.timestamp - before.timestamp
    oldest, old_count, old_bytes = _ages_by(after.ages, by)
    rows: list[Row] = []
    earlier = groups(before, by)
    for name, s1 in groups(after, by).items():
        s0 = earlier.get(name, SiteRecord())
        allocs = increase(s0.allocations, s1.allocations)
        frees = increase(s0.frees, s1.frees)
        live, live_bytes = s1.live_allocations, s1.live_bytes
        if min_age is not None:
            live, live_bytes = old_count.get(name, 0), old_bytes.get(name, 0)
            if not live:
                continue
        # A site with nothing live and nothing happening in the interval is history.
        elif not (allocs or frees or live):
            continue
        rows.append(
            Row(
                label=name[0],
                owner=name[1],
                allocs_per_s=_rate(allocs, elapsed),
                frees_per_s=_rate(frees, elapsed),
                alloc_bytes_per_s=_rate(increase(s0.allocated_bytes, s1.allocated_bytes), elapsed),
                live_allocations=live,
                live_bytes=live_bytes,
                avg_size=s1.requested_bytes / s1.allocations if s1.allocations else None,
                oldest_age=oldest.get(name) if s1.live_allocations else None,
                growth=s1.live_bytes - s0.live_bytes,
            )
        )
    if min_age is not None:
        return View(
            after.backend,
            after.kernel,
            _totals(before, after, elapsed, from_start, min_age),
            tuple(rows),
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
    return View(
        after.backend,
        after.kernel,
        _totals(before, after, elapsed, from_start, min_age),
        tuple(rows),
    )


def _window_sizes(before: SizeHistogram, after: SizeHistogram) -> SizeHistogram:
    counts = tuple(increase(a, b) for a, b in zip(before.counts, after.counts, strict=True))
    return SizeHistogram(counts, increase(before.sum, after.sum))


def _missing_parts(after: Snapshot) -> tuple[str, ...]:
    b = after.breakdown
    if b is None:
        return ()
    return tuple(p for p in NEEDS_PERCPU_STATS if p not in b.parts)


def _totals(
    before: Snapshot,
    after: Snapshot,
    elapsed: float,
    from_start: bool,
    min_age: float | None,
) -> Totals:
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
        breakdown=after.breakdown,
        missing_parts=_missing_parts(after),
        tracking_start_time=after.tracking_start_time,
        from_start=from_start,
        min_age=min_age,
        sizes=_window_sizes(before.size_histogram, after.size_histogram),
        sizes_since_start=after.size_histogram,
    )


def _key(value: float | None) -> float:
    # Rows without the value (a failure row has no live bytes) sort after every real one,
    # a shrinking site (negative growth) included.
    return -math.inf if value is None else value


_SORT_FIELD = {
    "live-bytes": "live_bytes",
    "allocs": "allocs_per_s",
    "frees": "frees_per_s",
    "bytes": "alloc_bytes_per_s",
    "fails": "fails_per_s",
    "growth": "growth",
    "age": "oldest_age",
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
            r.owner or "",
        ),
    )
