"""Wait for a condition under a generous deadline, never for a fixed time (not a test)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

# A loaded two-core machine, other BPF programs compiling next door: the deadline is a bound
# on a hang, not a claim about speed.
DEFAULT_TIMEOUT = 30.0


def wait_until(
    predicate: Callable[[], T],
    *,
    what: str | Callable[[], str],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
) -> T:
    """Call ``predicate`` until it returns a true value and return it; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            pytest.fail(f"waited {timeout:g} s for {described}")
        time.sleep(interval)
