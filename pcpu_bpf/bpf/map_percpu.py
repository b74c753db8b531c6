"""The percpu memory a BPF map holds on each CPU, from its type, sizes and flags.

What the kernel allocates from the percpu allocator for a map, as of Linux 6.18
(tests/test_map_percpu.py checks every case against the allocations a real map makes):

- a per-CPU array (``array_map_alloc``): each element, ``bpf_map_alloc_percpu`` of the
  value size rounded up to 8;
- every hash map (``htab_map_alloc``): its element count (``bpf_map_init_elem_count``,
  8 bytes), and a percpu_counter (4 bytes) when max_entries / 2 > online CPUs x 32;
- a preallocated hash map (``prealloc_init``): the per-CPU value of every element
  (per-CPU hashes: max_entries values, each rounded up to 8), then the free list's
  per-CPU heads (``pcpu_freelist_init``, 16 bytes), or for LRU hashes the LRU lists
  (``bpf_lru_init``: a local list of 32 bytes, or with ``BPF_F_NO_COMMON_LRU`` a whole
  list of 128); a plain preallocated hash adds a spare element pointer
  (``alloc_extra_elems``, 8 bytes);
- a hash map with ``BPF_F_NO_PREALLOC`` (``bpf_mem_alloc_init``): one ``bpf_mem_cache``
  (208 bytes) for its elements, and for a per-CPU hash a second one for the values,
  whose elements are percpu allocations made as the map fills: one per element in the
  map, and the cache keeps about one free value per possible CPU (it starts with exactly
  one; after deletions it holds between one and three per CPU until its refill work
  trims it). That cache is not visible from user space: the model counts one per CPU;
- a per-CPU cgroup storage (``bpf_cgroup_storage_alloc``): one value per storage, that
  is per (cgroup, attach type) a program using it is attached to, of the value size as
  it is (the percpu allocator rounds it up to 4, PCPU_MIN_ALLOC_SIZE);
- a stack trace map: the free list's heads (16 bytes); an LPM trie: one
  ``bpf_mem_cache``; a hash of maps: element count and free list;
- plain arrays, arrays of maps, cgroup storages, queues, stacks, ring buffers, bloom
  filters, device and CPU maps at creation: nothing.

The per-CPU values are the same on every kernel since per-CPU maps exist; the
bookkeeping sizes (struct bpf_mem_cache, the LRU lists) are those of 6.18 on x86-64.
Map types not listed here are not modelled (None).
"""

from __future__ import annotations

from pcpu_bpf.bpf.syscalls import (
    BPF_F_NO_COMMON_LRU,
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_ARRAY_OF_MAPS,
    BPF_MAP_TYPE_CGROUP_STORAGE,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_HASH_OF_MAPS,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_LRU_PERCPU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    BPF_MAP_TYPE_PERCPU_HASH,
    BPF_MAP_TYPE_STACK_TRACE,
    MapInfo,
)

ELEM_COUNT_BYTES = 8
PERCPU_COUNTER_BYTES = 4
PERCPU_COUNTER_BATCH = 32
FREELIST_HEAD_BYTES = 16
EXTRA_ELEM_BYTES = 8
LRU_LOCAL_LIST_BYTES = 32
LRU_LIST_BYTES = 128
MEM_CACHE_BYTES = 208

_HASHES = frozenset(
    {
        BPF_MAP_TYPE_HASH,
        BPF_MAP_TYPE_PERCPU_HASH,
        BPF_MAP_TYPE_LRU_HASH,
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_HASH_OF_MAPS,
    }
)
_LRU = frozenset({BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH})
_PERCPU_HASHES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH})
_NOTHING = frozenset(
    {BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_CGROUP_STORAGE}
    | {22, 23, 27, 30, 14, 16, 25}  # queue, stack, ringbuf, bloom filter, devmaps, cpumap
)
# Types whose values hold percpu memory: per-CPU arrays, hashes and cgroup storages.
PERCPU_VALUE_TYPES = frozenset(
    {BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE} | _PERCPU_HASHES
)


def round8(n: int) -> int:
    """``n`` rounded up to a multiple of 8, as the kernel sizes a per-CPU value."""
    return (n + 7) // 8 * 8


def round4(n: int) -> int:
    """``n`` rounded up to a multiple of 4, as pcpu_alloc sizes every request."""
    return (n + 3) // 4 * 4


def preallocated(info: MapInfo) -> bool:
    """Whether a hash map holds all its elements from its creation."""
    return not info.flags & BPF_F_NO_PREALLOC


def counts_entries(info: MapInfo) -> bool:
    """Whether the map's percpu bytes depend on how many entries it holds now."""
    if info.type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE:
        return True
    return info.type in _PERCPU_HASHES and not preallocated(info)


def _hash_bytes(info: MapInfo, online_cpus: int, possible_cpus: int, entries: int) -> int:
    out = ELEM_COUNT_BYTES
    if info.max_entries > 1 and info.max_entries // 2 > online_cpus * PERCPU_COUNTER_BATCH:
        out += PERCPU_COUNTER_BYTES
    value = round8(info.value_size)
    percpu = info.type in _PERCPU_HASHES
    if not preallocated(info):
        out += MEM_CACHE_BYTES
        if percpu:
            out += MEM_CACHE_BYTES + (entries + possible_cpus) * value
        return out
    if percpu:
        out += info.max_entries * value
    if info.type in _LRU:
        out += LRU_LIST_BYTES if info.flags & BPF_F_NO_COMMON_LRU else LRU_LOCAL_LIST_BYTES
        return out
    out += FREELIST_HEAD_BYTES
    if not percpu and info.type != BPF_MAP_TYPE_HASH_OF_MAPS:
        out += EXTRA_ELEM_BYTES
    return out


def map_bytes_per_cpu(
    info: MapInfo, *, online_cpus: int, possible_cpus: int, entries: int = 0
) -> int | None:
    """Percpu bytes the map holds on each CPU; None for a type not modelled.

    ``entries`` (the entries in the map now) matters only where `counts_entries` says so;
    ``online_cpus`` is what htab_map_alloc sized its counter by, ``possible_cpus`` what
    bpf_mem_alloc_init filled a cache for.
    """
    if info.type in _HASHES:
        return _hash_bytes(info, online_cpus, possible_cpus, entries)
    if info.type == BPF_MAP_TYPE_PERCPU_ARRAY:
        return info.max_entries * round8(info.value_size)
    if info.type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE:
        return entries * round4(info.value_size)
    if info.type == BPF_MAP_TYPE_STACK_TRACE:
        return FREELIST_HEAD_BYTES
    if info.type == BPF_MAP_TYPE_LPM_TRIE:
        return MEM_CACHE_BYTES
    if info.type in _NOTHING:
        return 0
    return None
