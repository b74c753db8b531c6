"""meminfo's Percpu in parts on the live kernel.

Per-CPU array maps of N entries of V bytes make N percpu allocations of V bytes at
bpf_map_alloc_percpu, V x units percpu bytes each. Maps held across the backend's start
are untraced_live, maps made after it traced_live, by exactly those bytes; the parts add
up to meminfo Percpu and keep their bounds; allocations held N seconds are N seconds old.

Other processes allocate and free percpu memory too. An exact comparison is made only
over a quiet window: two settled readings between which the programs counted no event
but the ones the test caused. A busy moment spoils one try; the test tries again with
the next map, a few times, before giving up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from waiting import wait_until

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.kernel.procfs import read_possible_cpus
from pcpu_bpf.model.breakdown import PAGE_SIZE, PARTS, kernel_live_per_unit, nr_units
from pcpu_bpf.model.snapshot import SiteKey, SiteRecord, Snapshot

pytestmark = pytest.mark.privileged

SITE = SiteKey("bpf_map_alloc_percpu")
VALUE, ENTRIES = 2000, 40  # a multiple of 8: array_map_alloc rounds values up to it
TRIES = 4
# A settled reading needs a moment without percpu events around the read: on a busy host
# (other suites churning maps) that can take a while.
SETTLE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def map_bytes() -> int:
    """The percpu bytes of one test map: the size on every unit."""
    return VALUE * ENTRIES * nr_units(read_percpu_stats(), read_possible_cpus())


def events(s: Snapshot) -> tuple[int, int, int]:
    """(allocations, tracked frees, everything else) the programs have counted."""
    other = (
        s.untracked_frees
        + s.total_failures
        + s.chunk_creations
        + s.chunk_destructions
        + sum(s.dropped.values())
    )
    return s.size_histogram.count, s.totals.frees, other


def part(s: Snapshot, name: str) -> int:
    assert s.breakdown is not None
    return s.breakdown.parts[name]


def settled(backend: object) -> Callable[[], Snapshot | None]:
    def take() -> Snapshot | None:
        s = backend.snapshot()  # type: ignore[attr-defined]
        return s if s.breakdown is not None and s.breakdown.settled else None

    return take


@pytest.fixture
def held() -> Iterator[list[int]]:
    """Maps made before the backend starts; whatever the test leaves open is closed."""
    fds = [syscalls.create_percpu_array(VALUE, ENTRIES, "pcpu_bd_held") for _ in range(TRIES)]
    try:
        yield fds
    finally:
        for fd in fds:
            syscalls.close(fd)


@pytest.fixture
def backend(held: list[int]) -> Iterator[object]:
    from pcpu_bpf.backends.bpf import BpfBackend

    b = BpfBackend(min_age=2.0)
    try:
        yield b
    finally:
        b.close()


def test_maps_held_across_the_start_are_untraced_live(
    backend, held: list[int], map_bytes: int
) -> None:
    for _ in range(TRIES):
        before = wait_until(settled(backend), what="a settled reading", timeout=SETTLE_TIMEOUT)
        syscalls.close(held.pop())  # freed by a kworker: untracked frees

        def freed(before: Snapshot = before) -> Snapshot | None:
            s = settled(backend)()
            return s if s and s.untracked_frees - before.untracked_frees >= ENTRIES else None

        after = wait_until(
            freed, what=f"the {ENTRIES} untracked frees of the held map", timeout=SETTLE_TIMEOUT
        )
        allocs0, frees0, other0 = events(before)
        if events(after) != (allocs0, frees0, other0 + ENTRIES):
            continue  # something else happened meanwhile: try the next map
        assert part(before, "untraced_live") - part(after, "untraced_live") == map_bytes
        assert part(after, "traced_live") == part(before, "traced_live")
        return
    pytest.fail(f"no quiet window in {TRIES} tries: the host is busy, rerun alone")


def test_maps_made_after_the_start_are_traced_live(backend, map_bytes: int) -> None:
    made: list[int] = []
    try:
        for _ in range(TRIES):
            before = wait_until(settled(backend), what="a settled reading", timeout=SETTLE_TIMEOUT)
            made.append(syscalls.create_percpu_array(VALUE, ENTRIES, "pcpu_bd_made"))

            def counted(before: Snapshot = before) -> Snapshot | None:
                s = settled(backend)()
                grown = s and events(s)[0] - events(before)[0] >= ENTRIES
                return s if grown else None

            after = wait_until(
                counted, what=f"the {ENTRIES} allocations of the new map", timeout=SETTLE_TIMEOUT
            )
            allocs0, frees0, other0 = events(before)
            if events(after) != (allocs0 + ENTRIES, frees0, other0):
                continue
            assert part(after, "traced_live") - part(before, "traced_live") == map_bytes
            assert part(after, "untraced_live") == part(before, "untraced_live")
            site0 = before.sites.get(SITE, SiteRecord())
            assert after.sites[SITE].live_bytes - site0.live_bytes == map_bytes
            return
        pytest.fail(f"no quiet window in {TRIES} tries: the host is busy, rerun alone")
    finally:
        for fd in made:
            syscalls.close(fd)


def test_parts_add_up_to_meminfo_within_their_bounds(backend) -> None:
    s = wait_until(settled(backend), what="a settled reading", timeout=SETTLE_TIMEOUT)
    b, ks = s.breakdown, s.kernel_stats
    assert b is not None and ks is not None and ks.percpu_stats is not None
    assert ks.meminfo_percpu_bytes is not None
    assert list(b.parts) == list(PARTS)  # percpu_stats is there: every part
    assert b.total == ks.meminfo_percpu_bytes
    assert b.violations == ()
    assert b.parts["unexplained"] == 0
    # The derived parts, against their bounds.
    u = nr_units(ks.percpu_stats, read_possible_cpus())
    free = sum(c.free_bytes for c in ks.percpu_stats.chunks if c.kind != "reserved") * u
    assert 0 <= b.parts["untraced_live"] <= kernel_live_per_unit(ks.percpu_stats) * u
    assert 0 <= b.parts["free_in_used_pages"]
    assert b.parts["free_in_used_pages"] + b.parts["empty_pages"] <= free
    assert ks.meminfo_percpu_bytes % (PAGE_SIZE * u) == 0  # whole pages of nr_units units
    # The sites' live bytes, outside the reserved chunk, are the traced part (one read).
    live = sum(r.live_bytes for k, r in s.sites.items() if not k.reserved)
    assert live == b.parts["traced_live"]
    assert b.parts["profiler"] == s.profiler_percpu_bytes  # possible CPUs fill the units


def test_allocations_held_n_seconds_are_at_least_n_seconds_old(backend) -> None:
    # The backend counts allocations at least 2 s old (min_age): ours join them once
    # they have been held that long, and their age is at least what the test waited.
    held_for = 2.0
    fd = syscalls.create_percpu_array(VALUE, ENTRIES, "pcpu_bd_aged")
    made = time.monotonic()  # after the allocations: the wait below is a lower bound
    try:

        def aged() -> Snapshot | None:
            waited = time.monotonic() - made
            s = backend.snapshot()
            if waited < held_for or s.ages is None:
                return None
            old = s.ages.old_allocations.get(SITE, 0)
            return s if old >= ENTRIES and s.ages.oldest_seconds[SITE] >= waited else None

        s = wait_until(aged, what=f"{ENTRIES} allocations {held_for:g} s old")
        assert s.ages is not None
        assert s.ages.oldest_seconds[SITE] >= held_for
        bands = {k.age: n for k, n in s.ages.bytes_by_age.items() if k.call_site == SITE.call_site}
        assert bands.get("1m", 0) >= VALUE * ENTRIES  # under a minute old: the first band
    finally:
        syscalls.close(fd)
