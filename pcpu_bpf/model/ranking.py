"""Bounded label sets: the N largest keys of a mapping, the rest summed under one key."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

# The label value of what the N largest leave over. Parentheses never occur in a BPF
# object name, and a cgroup path starts with "/": it cannot be a real owner's name.
OTHER = "(other)"
# Cgroups with series of their own unless --max-cgroups says otherwise.
DEFAULT_MAX_CGROUPS = 20


def top_n(
    values: Mapping[K, V], n: int, other: K, *, weight: Callable[[V], int] | None = None
) -> dict[K, V]:
    """The ``n`` entries of largest weight (ties by key order), plus ``other`` holding the
    sum of the rest when there is a rest; ``other`` is left out when nothing was folded.
    Values are numbers (weighed by their size) or anything that adds up, with ``weight``."""
    weigh: Callable[[V], int] = weight or abs  # type: ignore[assignment]
    ranked = sorted(values.items(), key=lambda kv: (-weigh(kv[1]), str(kv[0])))
    out = dict(ranked[:n])
    rest = [v for _, v in ranked[n:]]
    if rest:
        out[other] = functools.reduce(operator.add, rest, *([out[other]] if other in out else []))
    return out
