"""A read that many threads ask for and the source sees at most once per interval.

Kernel-side reads a scrape can cause go through `SharedRead`: scrapers, however many and however
fast, share one result per interval instead of each costing the kernel a read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[T]):
    value: T | None
    error: Exception | None
    started: float  # clock() when the read began: the data is no older than this

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # value is set when error is not


class SharedRead(Generic[T]):
    """``read()`` at most once per ``min_interval`` seconds; every caller shares the result.

    The interval runs from the end of one read to the start of the next, so a slow read
    cannot follow itself back to back. Callers that arrive while a read is under way
    wait for it and share it (so a burst costs one read even with ``min_interval=0``).
    An exception is shared like a value: a failing source is not hammered either.
    """

    def __init__(
        self,
        read: Callable[[], T],
        min_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        self._read = read
        self.min_interval = min_interval
        self._clock = clock
        self._cond = threading.Condition()
        self._last: _Outcome[T] | None = None
        self._finished = 0.0  # clock() at the end of the last read
        self._reading_since: float | None = None
        self._generation = 0  # completed reads
        self.reads = 0  # reads started, for tests and benchmarks

    def expire(self) -> None:
        """The next call reads anew, whatever the interval."""
        with self._cond:
            self._finished = float("-inf")

    def __call__(self) -> T:
        with self._cond:
            seen = self._generation
            while self._reading_since is not None:
                self._cond.wait()
            last = self._last
            if last is not None and (
                self._generation != seen or self._clock() - self._finished < self.min_interval
            ):
                return last.get()
            self._reading_since = self._clock()
            self.reads += 1
        started = self._reading_since
        try:
            outcome: _Outcome[T] = _Outcome(self._read(), None, started)
        except Exception as exc:  # shared with the waiters, re-raised in every caller
            outcome = _Outcome(None, exc, started)
        with self._cond:
            self._last = outcome
            self._finished = self._clock()
            self._reading_since = None
            self._generation += 1
            self._cond.notify_all()
        return outcome.get()

    def last_started(self) -> float | None:
        """clock() when the last completed read began; None before the first."""
        with self._cond:
            return None if self._last is None else self._last.started

    def stuck_for(self) -> float:
        """Seconds the read under way has been running; 0 when none is."""
        with self._cond:
            since = self._reading_since
        return 0.0 if since is None else self._clock() - since
