"""Read the programs' maps (bpf_programs/pcpu.bpf.c) through bpf(2) into a `Tables`.

Each map's expected type, key and value size are checked against what the kernel reports
before anything is decoded (`check_maps`): a mismatch is one line naming the map.

Reading never clears or deletes anything: counters stay cumulative. Site records hold
monotonic counters that the programs add to atomically; a site's live allocations are
allocations - dropped - frees, its live bytes requested - dropped - freed bytes (one
unit's, as the live entries keep them; the Snapshot multiplies by the units). The live
table is read only by the walk that gives the ages and the allocations in the chunks
created since tracing began (`read_live_records`; those chunks: `read_traced_chunks`).
The per-CPU counters are summed over CPUs modulo 2**64 like the kernel's u64s.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.errors import ProgramLoadError
from pcpu_bpf.model.layout import (
    CHUNK_CAPACITY,
    CHUNK_CREATED,
    CHUNK_DESTROYED,
    CHUNK_INFO_FORMAT,
    COUNTER_GROUPS,
    COUNTER_OFFSETS,
    HELPER_RANGES_FORMAT,
    LIVE_ENTRY_FORMAT,
    NR_COUNTERS,
    NR_SIZE_SLOTS,
    OWNER_STACK_DEPTH,
    OWNER_UNRESOLVED_REASONS,
    PER_CPU_DROPS,
    SITE_KEY_FORMAT,
    SITE_RECORD_FORMAT,
    SIZE_SUM_SLOT,
)
from pcpu_bpf.model.tables import Histogram, SiteAddressKey, SiteValue, Tables, address_key

# Tracepoint -> the function of pcpu.bpf.c that serves it.
PROGRAMS: dict[str, str] = {
    "percpu_alloc_percpu": "on_alloc",
    "percpu_free_percpu": "on_free",
    "percpu_alloc_percpu_fail": "on_alloc_fail",
    "percpu_create_chunk": "on_create_chunk",
    "percpu_destroy_chunk": "on_destroy_chunk",
}
# The maps of pcpu.bpf.c, and the layout record the loader adds beside them.
BPF_MAPS = (
    "pcpu_live",
    "pcpu_site_slots",
    "pcpu_sites",
    "pcpu_site_count",
    "pcpu_counters",
    "pcpu_chunks",
    "pcpu_chunk_info",
    "pcpu_helpers",
    "pcpu_owner_stack",
)
META_MAP = "pcpu_meta"

_MASK = (1 << 64) - 1
_RECORD = struct.Struct(SITE_RECORD_FORMAT)
_ENTRY = struct.Struct(LIVE_ENTRY_FORMAT)
_CHUNK_INFO = struct.Struct(CHUNK_INFO_FORMAT)
# How many of a record's leading fields are struct site_key's.
_KEY_FIELDS = len(struct.unpack(SITE_KEY_FORMAT, bytes(struct.calcsize(SITE_KEY_FORMAT))))
# The layout record beside a set: sha256 of the sources and defines, the CLOCK_REALTIME
# ns tracking began, the percpu bytes per CPU the set holds.
META_FORMAT = "<32sQQ"


@dataclass(frozen=True, slots=True)
class Capacities:
    """The two table sizes a set was built with."""

    live: int
    sites: int


@dataclass(frozen=True, slots=True)
class MapSpec:
    """What a map must be: type, key and value size, and which capacity it has."""

    type: int
    key_size: int
    value_size: int
    capacity: str  # "live", "sites", "chunks" or "one"

    def entries(self, capacities: Capacities) -> int:
        return {
            "live": capacities.live,
            "sites": capacities.sites,
            "chunks": CHUNK_CAPACITY,
            "one": 1,
        }[self.capacity]


MAP_SPECS: dict[str, MapSpec] = {
    "pcpu_live": MapSpec(syscalls.BPF_MAP_TYPE_HASH, 8, struct.calcsize(LIVE_ENTRY_FORMAT), "live"),
    "pcpu_site_slots": MapSpec(
        syscalls.BPF_MAP_TYPE_HASH, struct.calcsize(SITE_KEY_FORMAT), 4, "sites"
    ),
    "pcpu_sites": MapSpec(syscalls.BPF_MAP_TYPE_ARRAY, 4, _RECORD.size, "sites"),
    "pcpu_site_count": MapSpec(syscalls.BPF_MAP_TYPE_ARRAY, 4, 8, "one"),
    "pcpu_counters": MapSpec(syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8 * NR_COUNTERS, "one"),
    "pcpu_chunks": MapSpec(syscalls.BPF_MAP_TYPE_ARRAY, 4, 8, "chunks"),
    "pcpu_chunk_info": MapSpec(
        syscalls.BPF_MAP_TYPE_ARRAY, 4, struct.calcsize(CHUNK_INFO_FORMAT), "one"
    ),
    "pcpu_helpers": MapSpec(
        syscalls.BPF_MAP_TYPE_ARRAY, 4, struct.calcsize(HELPER_RANGES_FORMAT), "one"
    ),
    "pcpu_owner_stack": MapSpec(
        syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8 * OWNER_STACK_DEPTH, "one"
    ),
    "pcpu_meta": MapSpec(syscalls.BPF_MAP_TYPE_ARRAY, 4, struct.calcsize(META_FORMAT), "one"),
}


def map_mismatch(name: str, info: syscalls.MapInfo, capacities: Capacities) -> str | None:
    """Why map ``name`` is not what the reader decodes, or None when it is."""
    spec = MAP_SPECS[name]
    want = (spec.type, spec.key_size, spec.value_size, spec.entries(capacities))
    got = (info.type, info.key_size, info.value_size, info.max_entries)
    if want == got:
        return None
    return (
        f"map {name} is {syscalls.MAP_TYPE_NAMES.get(got[0], got[0])} "
        f"key {got[1]} value {got[2]} entries {got[3]}, the reader expects "
        f"{syscalls.MAP_TYPE_NAMES.get(want[0], want[0])} key {want[1]} value {want[2]} "
        f"entries {want[3]}"
    )


def check_maps(infos: Mapping[str, syscalls.MapInfo], capacities: Capacities) -> None:
    """ProgramLoadError naming the first map that is missing or laid out otherwise."""
    for name in MAP_SPECS:
        if name not in infos:
            raise ProgramLoadError(f"map {name} is missing from the loaded set")
        why = map_mismatch(name, infos[name], capacities)
        if why is not None:
            raise ProgramLoadError(why)


def _key(i: int) -> bytes:
    return struct.pack("<I", i)


def read_counters(fd: int, nr_cpus: int) -> list[int]:
    """The per-CPU counters element, summed over CPUs, one value per slot."""
    raw = syscalls.lookup_elem(fd, _key(0), 8 * NR_COUNTERS * nr_cpus)
    if raw is None:
        return [0] * NR_COUNTERS
    per_cpu = struct.unpack(f"<{NR_COUNTERS * nr_cpus}Q", raw)
    return [
        sum(per_cpu[cpu * NR_COUNTERS + i] for cpu in range(nr_cpus)) & _MASK
        for i in range(NR_COUNTERS)
    ]


def _records(fd: int, count: int) -> list[bytes]:
    # One syscall for the whole array where the kernel supports it (5.6+), else by key.
    if count == 0:
        return []
    try:
        return [v for _, v in syscalls.lookup_batch(fd, 4, _RECORD.size, count)][:count]
    except OSError:
        values = (syscalls.lookup_elem(fd, _key(i), _RECORD.size) for i in range(count))
        return [v for v in values if v is not None]


def _live(n: int) -> int:
    """A live figure, never below 0 (a reader can see a free before its allocation's
    counts on another CPU, for one read)."""
    n &= _MASK
    return 0 if n >> 63 else n


def read_sites(
    records_fd: int, count_fd: int, capacity: int
) -> tuple[dict[SiteAddressKey, SiteValue], dict[int, SiteAddressKey]]:
    """The site records in use: their raw keys -> SiteValue, and the slot -> key map the
    live entries' slots resolve through."""
    raw_count = syscalls.lookup_elem(count_fd, _key(0), 8)
    handed_out = struct.unpack("<Q", raw_count)[0] if raw_count else 0
    out: dict[SiteAddressKey, SiteValue] = {}
    slots: dict[int, SiteAddressKey] = {}
    for slot, raw in enumerate(_records(records_fd, min(handed_out, capacity))):
        fields = _RECORD.unpack(raw)
        frees, freed_b, freed_ext, allocs, req, dropped, dropped_b, ext = fields[_KEY_FIELDS:]
        if allocs == 0:
            continue  # a slot being filled, or one a race between two CPUs left empty
        key = address_key(fields[:_KEY_FIELDS])
        slots[slot] = key
        out[key] = SiteValue(
            allocations=allocs,
            requested_bytes=req,
            frees=frees,
            freed_bytes=freed_b,
            live_allocations=_live(allocs - dropped - frees),
            live_bytes=_live(req - dropped_b - freed_b),
            live_extension_bytes=_live(ext - freed_ext),
        )
    return out, slots


def read_live(fd: int, capacity: int) -> Iterator[tuple[int, int, int]]:
    """Every live entry as (slot, size, alloc_ns), batch by batch: one bpf(2) call per
    4,096 entries and no Python object per key. Entries freed or added while the walk
    runs may be missed or seen (a hash map has no snapshot)."""
    for blob in syscalls.lookup_batch_values(fd, 8, _ENTRY.size, capacity):
        for alloc_ns, size, _extension, slot, _off in _ENTRY.iter_unpack(blob):
            yield slot, size, alloc_ns


# One live entry with its key: ptr, alloc_ns, size, extension, slot, off (a plain
# tuple: a full table's walk makes 262,144 of them).
LiveRecord = tuple[int, int, int, int, int, int]


def read_live_records(fd: int, capacity: int) -> Iterator[LiveRecord]:
    """Every live entry with its pointer, batch by batch (as `read_live`)."""
    for keys, values, n in syscalls.lookup_batch_items(fd, 8, _ENTRY.size, capacity):
        ptrs = struct.unpack(f"<{n}Q", keys[: 8 * n])
        for ptr, (alloc_ns, size, ext, slot, off) in zip(
            ptrs, _ENTRY.iter_unpack(values[: _ENTRY.size * n]), strict=True
        ):
            yield ptr, alloc_ns, size, ext, slot, off


def read_traced_chunks(maps: Mapping[str, int]) -> tuple[list[int], int, int]:
    """The base_addr of every chunk the chunk table remembers, in slot order, the
    pointer shift (base_addr = ptr - off + shift) and the chunks it had no room for."""
    raw = syscalls.lookup_elem(maps["pcpu_chunk_info"], _key(0), _CHUNK_INFO.size)
    shift, full = _CHUNK_INFO.unpack(raw) if raw else (0, 0)
    try:
        values = [v for _, v in syscalls.lookup_batch(maps["pcpu_chunks"], 4, 8, CHUNK_CAPACITY)]
    except OSError:
        found = (
            syscalls.lookup_elem(maps["pcpu_chunks"], _key(i), 8) for i in range(CHUNK_CAPACITY)
        )
        values = [v for v in found if v is not None]
    bases = [struct.unpack("<Q", v)[0] for v in values[:CHUNK_CAPACITY]]
    return [b for b in bases if b], shift, full


def read_live_site(maps: Mapping[str, int], ptr: int) -> SiteAddressKey | None:
    """The site key of the live traced allocation at ``ptr``; None when none is live."""
    raw = syscalls.lookup_elem(maps["pcpu_live"], struct.pack("<Q", ptr), _ENTRY.size)
    if raw is None:
        return None
    _, _, _, slot, _ = _ENTRY.unpack(raw)
    record = syscalls.lookup_elem(maps["pcpu_sites"], _key(slot), _RECORD.size)
    if record is None:
        return None
    return address_key(_RECORD.unpack(record)[:_KEY_FIELDS])


def _group(values: list[int], name: str) -> list[int]:
    at = COUNTER_OFFSETS[name]
    return values[at : at + dict(COUNTER_GROUPS)[name]]


def _histogram(values: list[int]) -> Histogram:
    return Histogram(counts=values[:NR_SIZE_SLOTS], sum=values[SIZE_SUM_SLOT])


def read_tables(maps: Mapping[str, int], nr_cpus: int, site_capacity: int) -> Tables:
    """Every map but the live table, by fd, into one `Tables`."""
    return read_tables_and_slots(maps, nr_cpus, site_capacity)[0]


def read_tables_and_slots(
    maps: Mapping[str, int], nr_cpus: int, site_capacity: int
) -> tuple[Tables, dict[int, SiteAddressKey]]:
    """`read_tables`, and which site key each slot holds."""
    counters = read_counters(maps["pcpu_counters"], nr_cpus)
    sites, slots = read_sites(maps["pcpu_sites"], maps["pcpu_site_count"], site_capacity)
    chunks = _group(counters, "chunks")
    traced_chunks, shift, chunk_table_full = read_traced_chunks(maps)
    return Tables(
        sites=sites,
        untracked_frees=_group(counters, "untracked_frees")[0],
        sizes=_histogram(_group(counters, "sizes")),
        failures=_group(counters, "failures"),
        failed_sizes=_histogram(_group(counters, "fail_sizes")),
        chunk_creations=chunks[CHUNK_CREATED],
        chunk_destructions=chunks[CHUNK_DESTROYED],
        dropped=dict(zip(PER_CPU_DROPS, _group(counters, "drops"), strict=True))
        | {"chunk_table_full": chunk_table_full},
        owner_unresolved=dict(
            zip(OWNER_UNRESOLVED_REASONS, _group(counters, "owner_unresolved"), strict=True)
        ),
        live_entries=sum(s.live_allocations for s in sites.values()),
        traced_chunks=traced_chunks,
        chunk_shift=shift,
    ), slots
