"""Numbers the BPF programs and the Python side share, defined here and only here.

The loader passes each of them to the C as a -D define (bpf_programs/ defines none of
them itself), and the reference aggregator, the map reader and the Snapshot read them
from here, so the two sides cannot drift apart.
"""

from __future__ import annotations

# Upper bounds of the log2 size histogram: 4, 8, ..., 32768 bytes, then +Inf.
SIZE_BUCKET_SHIFT = 2  # the first bucket counts sizes up to 1 << SIZE_BUCKET_SHIFT
SIZE_BUCKETS: tuple[int, ...] = tuple(1 << (SIZE_BUCKET_SHIFT + i) for i in range(14))
NR_SIZE_SLOTS = len(SIZE_BUCKETS) + 1
# A histogram map holds its buckets, then the sum of the sizes in this slot.
SIZE_SUM_SLOT = NR_SIZE_SLOTS

# Reasons a tracking table refused an entry: an allocation (live, site: per-CPU counter
# slots, in this order), or a chunk created since tracing began (chunk: counted in
# struct chunk_info, shared by the CPUs, since it is rare and must not grow the per-CPU
# counters).
DROP_REASONS: tuple[str, ...] = ("live_table_full", "site_table_full", "chunk_table_full")
PER_CPU_DROPS = DROP_REASONS[:2]

# Default capacities of the live-allocation table and the site table. A site is a call
# site, as seen from one cgroup, with one owner: a few times the call sites.
DEFAULT_LIVE_CAPACITY = 262_144
DEFAULT_SITE_CAPACITY = 16_384
# The most entries the kernel gives a hash or per-CPU hash map: htab_map_alloc
# (kernel/bpf/hashtab.c) rounds max_entries up to a power of two of buckets and refuses
# more than U32_MAX / sizeof(struct bucket) (16 bytes) of them. Within it, the
# preallocated entries must also fit in memory (the kernel answers ENOMEM otherwise).
MAX_TABLE_CAPACITY = 1 << 27
# Chunks created since tracing began and not destroyed that the chunk table remembers
# (percpu_create_chunk's base_addr; a host has tens of chunks). An array, scanned on
# those rare events, so it holds no percpu memory, unlike a hash map.
CHUNK_CAPACITY = 256

# Owners (pcpu_bpf/model/owners.py): at a call site inside a known helper, the programs
# take the kernel stack (bpf_get_stack, into a per-CPU scratch element) and key the site
# by the first frame above the call site's that lies in no helper. OWNER_STACK_SKIP drops
# the program's own frame; the call site is found in the stack by its address, so the
# tracepoint's plumbing frames (bpf_trace_run*, on some kernels __traceiter_*) do no harm.
OWNER_STACK_SKIP = 1
OWNER_STACK_DEPTH = 10  # frames kept: plumbing, the allocator, the helpers, the owner
MAX_HELPER_RANGES = 32  # address ranges of helper code the programs compare frames with
# Why an allocation at a helper got no owner (its site's owner is then the call site).
OWNER_UNRESOLVED_REASONS: tuple[str, ...] = (
    "no_stack",  # bpf_get_stack failed
    "site_not_on_stack",  # the call site's frame is not among the frames taken
    "only_helpers",  # every frame above it, up to OWNER_STACK_DEPTH, is a helper
)

# Slots of the chunk counter: chunks created, chunks destroyed.
CHUNK_CREATED, CHUNK_DESTROYED = 0, 1

# Failure counter slots: one per (atomic, reserved) class, see failure_index.
FAILURE_ATOMIC_WEIGHT = 2
NR_FAILURE_CLASSES = 2 * FAILURE_ATOMIC_WEIGHT

# Every small counter lives in one per-CPU element of u64s (one lookup per event), in
# groups at fixed offsets: group name -> its length, in the element's order.
COUNTER_GROUPS: tuple[tuple[str, int], ...] = (
    ("sizes", SIZE_SUM_SLOT + 1),  # histogram buckets, then the sum
    ("fail_sizes", SIZE_SUM_SLOT + 1),
    ("failures", NR_FAILURE_CLASSES),
    ("chunks", max(CHUNK_CREATED, CHUNK_DESTROYED) + 1),
    ("drops", len(PER_CPU_DROPS)),
    ("untracked_frees", 1),
    ("owner_unresolved", len(OWNER_UNRESOLVED_REASONS)),
)


def _offsets() -> dict[str, int]:
    out, at = {}, 0
    for name, length in COUNTER_GROUPS:
        out[name] = at
        at += length
    out["end"] = at
    return out


COUNTER_OFFSETS: dict[str, int] = _offsets()
NR_COUNTERS = COUNTER_OFFSETS.pop("end")

# Struct layouts the reader decodes (bpf_programs/pcpu.h), as Python struct formats; the
# loader checks each against the map's key and value size before reading anything.
# struct site_key: call_site, owner (0: none), cgroup_id, atomic, reserved. A new key
# field goes here and in pcpu.h's struct and its filling in on_alloc; in tables.py,
# SiteAddressKey, address_key() and site_key(); the key the reference aggregator makes of
# an event; SiteKey and the catalog's SITE labels. Nothing else unpacks a key by position.
SITE_KEY_FORMAT = "<QQQBB6x"
# struct site_record: the key (written once) and the 3 counters written by frees (frees,
# freed_bytes, freed_extension_bytes), 64 bytes; then in the second 64-byte half the 5
# written by allocations (allocations, requested_bytes, dropped, dropped_bytes,
# extension_bytes).
SITE_RECORD_FORMAT = SITE_KEY_FORMAT + "3Q8x5Q24x"
# struct helper_ranges, the one element of pcpu_helpers: how many, the starts, the ends.
HELPER_RANGES_FORMAT = f"<Q{MAX_HELPER_RANGES}Q{MAX_HELPER_RANGES}Q"
# struct live_entry: alloc_ns (CLOCK_BOOTTIME), size, extension, slot, and the offset
# of the allocation in its chunk (off: below the unit size, 32 bits hold it). The
# chunk's base_addr is then ptr - off + the pointer shift, the same for every chunk.
LIVE_ENTRY_FORMAT = "<QIIII"
# struct chunk_info: the pointer shift, base_addr + off - ptr of the last traced
# allocation (the same for every chunk: __addr_to_pcpu_ptr() subtracts pcpu_base_addr
# and adds __per_cpu_start alike, mm/percpu.c), and the chunks the table had no room for.
CHUNK_INFO_FORMAT = "<QQ"
# A live entry keeps an allocation's size and memcg extension in 32 bits: pcpu_alloc()
# refuses requests above 32 KiB (PCPU_MIN_UNIT_SIZE) before any tracepoint, so a real
# size never needs more. The site records add what the entry keeps, so a record's
# allocated minus freed sizes stays exactly its live sizes, whatever an event says.
KEPT_MASK = 0xFFFF_FFFF


def size_slot(size: int) -> int:
    """Index of the histogram bucket counting ``size`` (the BPF side computes the same)."""
    if size <= SIZE_BUCKETS[0]:
        return 0
    return min((size - 1).bit_length() - SIZE_BUCKET_SHIFT, NR_SIZE_SLOTS - 1)


def failure_index(atomic: bool, reserved: bool) -> int:
    """Slot of the failure counter for one (atomic, reserved) class."""
    return int(atomic) * FAILURE_ATOMIC_WEIGHT + int(reserved)


# ---- the recorder (bpf_programs/record.bpf.c, `pcpu-bpf record`) ------------------

# The kind of each recorded event, in the order of the five tracepoints.
RECORD_KINDS: tuple[str, ...] = (
    "percpu_alloc_percpu",
    "percpu_free_percpu",
    "percpu_alloc_percpu_fail",
    "percpu_create_chunk",
    "percpu_destroy_chunk",
)
# Flag bits of a recorded event: the allocation's flags, then which optional tracepoint
# fields this kernel has (a kernel before 5.19 has none of the three).
RECORD_RESERVED, RECORD_ATOMIC = 1, 2
RECORD_HAS_CALL_SITE, RECORD_HAS_BYTES_ALLOC, RECORD_HAS_GFP = 4, 8, 16
# struct recorded_event (bpf_programs/record.h): boot-clock ns, pid_tgid, cgroup id,
# call_site, size, align, base_addr, ptr, bytes_alloc, gfp_flags, off, cpu, kind, flags,
# comm. The fields an event kind does not have are 0.
RECORD_EVENT_FORMAT = "<10QiIBB6x16s"
# The ring buffer's default size: 16 MiB, about 150,000 events in flight.
DEFAULT_RING_BYTES = 16 << 20
