"""How old the live traced allocations are: per site, the oldest and the bytes by age band.

Both backends walk their live table (the BPF map, read from user space, or the reference
aggregator's entries) and fold every entry into an `AgeFold`: an entry is its site's raw
key (the BPF slot, or the address key), its size (one unit's copy) and its allocation
time on the backend's clock. Bands are not cumulative: an allocation counts in the first band
whose bound its age is below, so the bands of a site add up to its live bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from pcpu_bpf.model.snapshot import AgeKey, LiveAges, SiteKey

# Age bands: (label, upper bound in seconds). "1m" is younger than a minute, "1h" a
# minute to an hour, "1d" an hour to a day, "older" a day or more.
AGE_BANDS: tuple[tuple[str, float], ...] = (
    ("1m", 60.0),
    ("1h", 3600.0),
    ("1d", 86400.0),
    ("older", math.inf),
)
BAND_NAMES = tuple(name for name, _ in AGE_BANDS)

K = TypeVar("K", bound=Hashable)

# Per raw key: [oldest allocation time, bytes per band..., old allocations, old bytes].
_OLDEST, _BANDS, _OLD_COUNT, _OLD_BYTES = 0, 1, 1 + len(AGE_BANDS), 2 + len(AGE_BANDS)
assert len(AGE_BANDS) == 4, "AgeFold.add is unrolled for four bands"


class AgeFold(Generic[K]):
    """Live entries folded per raw key (the BPF slot, or the address key), in one pass.

    The loop does the least per entry (a live table holds up to 2^27 of them): sizes are
    summed per raw key, and names and units are applied once per key by `ages`.
    Times are in ticks of the backend's clock, ``per_second`` of them a second.
    """

    def __init__(self, now: float, *, per_second: float = 1.0, min_age: float | None = None):
        self.now = now
        self.per_second = per_second
        self.min_age = min_age
        # An entry is in band i when its time is after now - bound_i (younger than it).
        self._since = [now - bound * per_second for _, bound in AGE_BANDS[:-1]]
        self._old_since = now - min_age * per_second if min_age is not None else -math.inf
        self._per_key: dict[K, list[float]] = {}

    def add(self, entries: Iterable[tuple[K, int, float]]) -> None:
        """Fold entries of (raw key, size of one unit, allocation time)."""
        # Unrolled for the four bands: at 262,144 entries this loop is most of a walk's
        # cost, and a loop over the bands per entry doubled it.
        young, hour, day = self._since
        old_since = self._old_since
        per_key = self._per_key
        get = per_key.get
        for key, size, at in entries:
            acc = get(key)
            if acc is None:
                acc = per_key[key] = [at, 0, 0, 0, 0, 0, 0]
            elif at < acc[_OLDEST]:
                acc[_OLDEST] = at
            if at > young:
                acc[1] += size
            elif at > hour:
                acc[2] += size
            elif at > day:
                acc[3] += size
            else:
                acc[4] += size
            if at <= old_since:
                acc[_OLD_COUNT] += 1
                acc[_OLD_BYTES] += size

    def ages(self, *, nr_units: int, site_of: Callable[[K], SiteKey | None]) -> LiveAges:
        """The folded entries as LiveAges; ``site_of`` names a raw key's site (None: a key
        whose site is unknown, left out). Bytes become percpu bytes of ``nr_units``."""
        oldest: dict[SiteKey, float] = {}
        by_age: dict[AgeKey, int] = {}
        old_count: dict[SiteKey, int] = {}
        old_bytes: dict[SiteKey, int] = {}
        for key, acc in self._per_key.items():
            site = site_of(key)
            if site is None:
                continue
            age = max(0.0, (self.now - acc[_OLDEST]) / self.per_second)
            oldest[site] = max(oldest.get(site, 0.0), age)
            for i, name in enumerate(BAND_NAMES):
                if acc[_BANDS + i]:
                    band = AgeKey(site.call_site, site.atomic, site.reserved, site.owner, name)
                    by_age[band] = by_age.get(band, 0) + int(acc[_BANDS + i]) * nr_units
            if self.min_age is not None:
                old_count[site] = old_count.get(site, 0) + int(acc[_OLD_COUNT])
                old_bytes[site] = old_bytes.get(site, 0) + int(acc[_OLD_BYTES]) * nr_units
        return LiveAges(
            oldest_seconds=dict(sorted(oldest.items())),
            bytes_by_age=dict(sorted(by_age.items())),
            min_age=self.min_age,
            old_allocations=dict(sorted(old_count.items())),
            old_bytes=dict(sorted(old_bytes.items())),
        )
