"""Ages of the live allocations: the fold into bands, and the simulator's slow leak."""

from __future__ import annotations

import pytest

from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.model.ages import AGE_BANDS, BAND_NAMES, AgeFold
from pcpu_bpf.model.snapshot import AgeKey, SiteKey
from pcpu_bpf.sim.scenarios import LEAK_EVERY
from pcpu_bpf.sim.simulation import OPS_PER_SECOND

A, B = SiteKey("a"), SiteKey("b", atomic=True)
NAMES = {1: A, 2: A, 3: B}  # raw keys 1 and 2 are two offsets in one function


def fold(entries: list[tuple[int, int, float]], now: float = 100_000.0, **kw: object):
    f: AgeFold[int] = AgeFold(now, **kw)  # type: ignore[arg-type]
    f.add(entries)
    return f.ages(nr_units=2, site_of=NAMES.get)


def test_bands_do_not_overlap_and_add_up() -> None:
    now = 100_000.0
    ages = [0, 59.9, 60, 3599, 3600, 86399, 86400, 99_000]  # seconds before now
    ages_of = fold([(1, 8, now - a) for a in ages], now)
    assert [b for b, _ in AGE_BANDS] == list(BAND_NAMES) == ["1m", "1h", "1d", "older"]
    by = {k.age: n for k, n in ages_of.bytes_by_age.items()}
    # Two allocations in each band, 8 bytes on 2 units each.
    assert by == {"1m": 32, "1h": 32, "1d": 32, "older": 32}
    assert sum(by.values()) == len(ages) * 8 * 2
    assert ages_of.oldest_seconds == {A: 99_000}


def test_raw_keys_fold_into_their_site_and_empty_bands_are_left_out() -> None:
    now = 1000.0
    ages = fold([(1, 4, now - 10), (2, 4, now - 700), (3, 12, now - 1), (9, 4, 0.0)], now)
    assert ages.oldest_seconds == {A: 700.0, B: 1.0}  # raw key 9 names no site: left out
    assert ages.bytes_by_age == {
        AgeKey("a", False, False, "a", "1m"): 8,
        AgeKey("a", False, False, "a", "1h"): 8,
        AgeKey("b", True, False, "b", "1m"): 24,
    }
    assert ages.min_age is None and ages.old_allocations == {}


def test_min_age_counts_what_lived_that_long() -> None:
    now = 1000.0
    ages = fold([(1, 4, now - 10), (2, 4, now - 700), (3, 12, now - 30)], now, min_age=30.0)
    assert ages.old_allocations == {A: 1, B: 1}
    assert ages.old_bytes == {A: 8, B: 24}


def test_clock_ticks_per_second() -> None:
    now_ns = 5_000 * 10**9
    ages = fold([(1, 4, now_ns - 90 * 10**9)], now_ns, per_second=1e9)
    assert ages.oldest_seconds == {A: pytest.approx(90.0)}
    assert list(ages.bytes_by_age) == [AgeKey("a", False, False, "a", "1h")]


def test_the_simulated_leak_ages() -> None:
    """The leak scenario's driver allocates once a simulated second and never frees: its
    oldest allocation is as old as the run, and its bytes move through the bands."""
    backend = SimBackend("leak", seed=0, clock=lambda: 0.0)
    seconds = 150
    backend.advance(seconds * int(OPS_PER_SECOND))
    s = backend.snapshot()
    assert s.ages is not None
    leak = SiteKey("leaky_driver_open")
    first = 249 / OPS_PER_SECOND  # the first leak: step 250, after 249 steps of 1/2000 s
    assert s.ages.oldest_seconds[leak] == pytest.approx(seconds - first)
    bands = {k.age: n for k, n in s.ages.bytes_by_age.items() if k.call_site == leak.call_site}
    per_leak = 192 * 2  # bytes on 2 units
    young = 60 * int(OPS_PER_SECOND) // LEAK_EVERY  # made in the last minute
    assert bands["1m"] == young * per_leak
    assert bands["1h"] == s.sites[leak].live_bytes - young * per_leak
    assert sum(bands.values()) == s.sites[leak].live_bytes
