"""The percpu memory a loaded set holds, from its map definitions and program count.

What the kernel allocates from the percpu allocator for each object, as of Linux 6.18
(tests/test_footprint.py checks the sum against the allocations a real load makes):

- a program: ``bpf_prog_alloc`` its run statistics (struct bpf_prog_stats, 32 bytes) and
  ``bpf_prog_alloc_no_stats`` its recursion guard (an int, 4 bytes);
- a map: what `pcpu_bpf.bpf.map_percpu` says of its type (every one of ours is
  preallocated, so its figure does not move as it fills).

Programs whose stack exceeds the JIT's private-stack threshold would get a private
stack as well; ours stay below it, and the test would see one.
"""

from __future__ import annotations

from collections.abc import Iterable

from pcpu_bpf.bpf.map_percpu import map_bytes_per_cpu
from pcpu_bpf.bpf.syscalls import MapInfo

PROG_STATS_BYTES = 32
PROG_ACTIVE_BYTES = 4


def _map(info: MapInfo, online_cpus: int) -> int:
    # Every map of the set is preallocated: possible CPUs and entries do not enter.
    n = map_bytes_per_cpu(info, online_cpus=online_cpus, possible_cpus=0)
    if n is None:
        raise ValueError(f"percpu footprint of map type {info.type_name} is not modelled")
    return n


def bytes_per_cpu(maps: Iterable[MapInfo], nr_programs: int, online_cpus: int) -> int:
    """Percpu bytes a set of maps and programs holds on each possible CPU."""
    programs = nr_programs * (PROG_STATS_BYTES + PROG_ACTIVE_BYTES)
    return programs + sum(_map(m, online_cpus) for m in maps)
