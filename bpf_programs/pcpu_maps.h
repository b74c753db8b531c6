/* Shared structs and maps of the percpu profiler (pcpu_bpf/tables.py mirrors them).
 * Every map is preallocated: a map that allocated percpu memory while an event is
 * handled would re-enter the tracepoint, and the kernel drops nested runs. */
#ifndef PCPU_MAPS_H
#define PCPU_MAPS_H

#ifndef LIVE_CAPACITY
#define LIVE_CAPACITY 262144
#endif
#ifndef SITE_CAPACITY
#define SITE_CAPACITY 4096
#endif
#ifndef NR_POSSIBLE_CPUS
#error "NR_POSSIBLE_CPUS must be defined"
#endif

/* Buckets of snapshot.SIZE_BUCKETS (4 .. 32768) plus +Inf; the slot after them is the sum. */
#define NR_SIZE_SLOTS 15
#define SIZE_SUM_SLOT NR_SIZE_SLOTS

#define DROP_LIVE_TABLE_FULL 0
#define DROP_SITE_TABLE_FULL 1

#define CHUNK_CREATED 0
#define CHUNK_DESTROYED 1

/* pcpu_live_count slots: entries of pcpu_live = inserted - deleted. */
#define LIVE_INSERTED 0
#define LIVE_DELETED 1

struct live_entry {
    u64 call_site;
    u64 size;
    u64 bytes_alloc;
    u8 atomic;
    u8 reserved;
    u8 pad[6];
};

struct site_key {
    u64 call_site;
    u8 atomic;
    u8 reserved;
    u8 pad[6];
};

/* Each field has one writer program (alloc: the first five, free: the last two) and a
 * program never nests on its own CPU, so plain += on these per-CPU values is safe without
 * atomics. Live allocations and bytes are tracked - frees and tracked_bytes - freed_bytes,
 * summed over CPUs by the reader (pcpu_bpf/bpf_maps.py). */
struct site_value {
    u64 allocations;
    u64 requested_bytes;
    u64 allocated_bytes;
    u64 tracked;
    u64 tracked_bytes;
    u64 frees;
    u64 freed_bytes;
};

/* bcc compiles each program file as its own module and rewrites map calls only in the
 * main file, so the maps are created once by pcpu_maps.bpf.c (PCPU_MAPS_OWNER) as shared
 * tables and the program modules bind to them as extern tables. */
#ifdef PCPU_MAPS_OWNER
#define PCPU_MAP(type, key, leaf, name, n) BPF_TABLE_SHARED(type, key, leaf, name, n)
#else
#define PCPU_MAP(type, key, leaf, name, n) BPF_TABLE("extern", key, leaf, name, n)
#endif

PCPU_MAP("hash", u64, struct live_entry, pcpu_live, LIVE_CAPACITY);
PCPU_MAP("percpu_hash", struct site_key, struct site_value, pcpu_sites, SITE_CAPACITY);
PCPU_MAP("percpu_array", u32, u64, pcpu_sizes, NR_SIZE_SLOTS + 1);
PCPU_MAP("percpu_array", u32, u64, pcpu_failures, 4);
PCPU_MAP("percpu_array", u32, u64, pcpu_fail_sizes, NR_SIZE_SLOTS + 1);
PCPU_MAP("percpu_array", u32, u64, pcpu_chunks, 2);
PCPU_MAP("percpu_array", u32, u64, pcpu_drops, 2);
PCPU_MAP("percpu_array", u32, u64, pcpu_untracked, 1);
PCPU_MAP("percpu_array", u32, u64, pcpu_live_count, 2);

/* snapshot.size_slot(): bit_length(size - 1) - 2, clamped to [0, NR_SIZE_SLOTS - 1]. */
static __always_inline u32 size_slot(u64 size)
{
    u64 v;
    u32 bits = 0;

    if (size <= 4)
        return 0;
    v = size - 1;
    if (v >> 32) { v >>= 32; bits += 32; }
    if (v >> 16) { v >>= 16; bits += 16; }
    if (v >> 8) { v >>= 8; bits += 8; }
    if (v >> 4) { v >>= 4; bits += 4; }
    if (v >> 2) { v >>= 2; bits += 2; }
    if (v >> 1) { v >>= 1; bits += 1; }
    bits += v;
    if (bits - 2 > NR_SIZE_SLOTS - 1)
        return NR_SIZE_SLOTS - 1;
    return bits - 2;
}

#endif
