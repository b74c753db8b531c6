"""Bounded label sets: the N largest keys of a mapping, the rest summed under one key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

K = TypeVar("K")

# The label value of what the N largest leave over. Parentheses never occur in a BPF
# object name, and a cgroup path starts with "/": it cannot be a real owner's name.
OTHER = "(other)"
# Cgroups with series of their own unless --max-cgroups says otherwise.
DEFAULT_MAX_CGROUPS = 20


def top_n(
    values: Mapping[K, int], n: int, other: K, *, weight: Callable[[int], int] = abs
) -> dict[K, int]:
    """The ``n`` entries of largest weight (ties by key order), plus ``other`` holding the
    sum of the rest when there is a rest; ``other`` is left out when nothing was folded."""
    ranked = sorted(values.items(), key=lambda kv: (-weight(kv[1]), str(kv[0])))
    out = dict(ranked[:n])
    rest = ranked[n:]
    if rest:
        out[other] = out.get(other, 0) + sum(v for _, v in rest)
    return out
