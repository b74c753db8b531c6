"""The percpu memory a loaded set holds, from its map definitions and program count.

What the kernel allocates from the percpu allocator for each object, as of Linux 6.18
(tests/test_footprint.py checks the sum against the allocations a real load makes):

- a program: ``bpf_prog_alloc`` its run statistics (struct bpf_prog_stats, 32 bytes) and
  ``bpf_prog_alloc_no_stats`` its recursion guard (an int, 4 bytes);
- a per-CPU array: each element (``bpf_map_alloc_percpu``, value size rounded up to 8);
- a preallocated hash map (``htab_map_alloc``): the free list's per-CPU heads
  (``pcpu_freelist_init``, 16 bytes), the element count (``bpf_map_init_elem_count``,
  8 bytes), a per-CPU spare element pointer for non-per-CPU hashes
  (``alloc_extra_elems``, 8 bytes), and a percpu_counter (4 bytes) when
  max_entries / 2 > online CPUs x 32;
- a plain array: nothing.

Programs whose stack exceeds the JIT's private-stack threshold would get a private
stack as well; ours stay below it, and the test would see one.
"""

from __future__ import annotations

from collections.abc import Iterable

from pcpu_bpf.bpf.syscalls import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    MapInfo,
)

PROG_STATS_BYTES = 32
PROG_ACTIVE_BYTES = 4
FREELIST_HEAD_BYTES = 16
ELEM_COUNT_BYTES = 8
EXTRA_ELEM_BYTES = 8
PERCPU_COUNTER_BYTES = 4
PERCPU_COUNTER_BATCH = 32


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def map_bytes_per_cpu(info: MapInfo, online_cpus: int) -> int:
    """Percpu bytes one map holds on each CPU; ValueError for a map type not modelled."""
    if info.type == BPF_MAP_TYPE_ARRAY:
        return 0
    if info.type == BPF_MAP_TYPE_PERCPU_ARRAY:
        return info.max_entries * _round8(info.value_size)
    if info.type == BPF_MAP_TYPE_HASH:
        counter = info.max_entries // 2 > online_cpus * PERCPU_COUNTER_BATCH
        return (
            FREELIST_HEAD_BYTES
            + ELEM_COUNT_BYTES
            + EXTRA_ELEM_BYTES
            + (PERCPU_COUNTER_BYTES if counter else 0)
        )
    raise ValueError(f"percpu footprint of map type {info.type_name} is not modelled")


def bytes_per_cpu(maps: Iterable[MapInfo], nr_programs: int, online_cpus: int) -> int:
    """Percpu bytes a set of maps and programs holds on each possible CPU."""
    programs = nr_programs * (PROG_STATS_BYTES + PROG_ACTIVE_BYTES)
    return programs + sum(map_bytes_per_cpu(m, online_cpus) for m in maps)
