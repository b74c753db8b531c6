"""meminfo's Percpu in parts on the live kernel.

Per-CPU array maps of N entries of V bytes make N percpu allocations of V bytes at
bpf_map_alloc_percpu, V x units percpu bytes each. Maps held across the backend's start
are untraced_live, maps made after it traced_live, by exactly those bytes; the parts add
up to meminfo Percpu and keep their bounds; allocations held N seconds are N seconds old.

Other processes allocate and free percpu memory too. Each reading is settled (the
kernel's figures and the traced ones of one moment), and a comparison is made only
when nothing between two readings could move the part it checks but what the test did:
untraced_live moves only with untracked frees and drops, a site's live bytes only with
that site's events. A busy moment spoils one try; the test tries again with the next
map, a few times, before giving up.
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


def untraced_events(s: Snapshot) -> tuple[int, int]:
    """What moves untraced_live: untracked frees, and allocations not tracked (drops)."""
    return s.untracked_frees, sum(s.dropped.values())


def site(s: Snapshot) -> SiteRecord:
    return s.sites.get(SITE, SiteRecord())


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
        untracked, drops = untraced_events(before)
        if untraced_events(after) != (untracked + ENTRIES, drops):
            continue  # another untraced free or a drop meanwhile: try the next map
        assert part(before, "untraced_live") - part(after, "untraced_live") == map_bytes
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
                grown = s and site(s).allocations - site(before).allocations >= ENTRIES
                return s if grown else None

            after = wait_until(
                counted, what=f"the {ENTRIES} allocations of the new map", timeout=SETTLE_TIMEOUT
            )
            s0, s1 = site(before), site(after)
            if (s1.allocations - s0.allocations, s1.frees - s0.frees) != (ENTRIES, 0):
                continue  # another map came or went meanwhile: try again
            assert s1.live_bytes - s0.live_bytes == map_bytes
            # Every site's live bytes are in traced_live (one read each: asserted below),
            # so the map's are; and untraced_live did not take them.
            live = sum(r.live_bytes for k, r in after.sites.items() if not k.reserved)
            assert part(after, "traced_live") == live
            if untraced_events(after) == untraced_events(before):
                assert part(after, "untraced_live") == part(before, "untraced_live")
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
