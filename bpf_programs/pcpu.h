/* Keys and values of the maps, as pcpu_bpf/bpf/maps.py decodes them (the struct formats
 * of pcpu_bpf/model/layout.py; the loader checks their sizes against the maps). */

struct site_key {
    u64 call_site;
    u8 atomic;
    u8 reserved;
    u8 pad[6];
};

/* One call site's counters; shared by every CPU, so changed with atomic adds. The live
 * allocations are allocations - dropped - frees (dropped: not tracked, table full).
 * What allocations write and what frees write sit in two 64-byte halves: a free on one
 * CPU then does not take the cache line an allocation on another CPU is writing. */
struct site_record {
    struct site_key key;
    u64 allocations;
    u64 requested_bytes;
    u64 allocated_bytes;
    u64 dropped;
    u64 dropped_bytes;
    u64 pad_alloc;
    u64 frees;
    u64 freed_bytes;
    u64 pad_free[6];
};

/* What the live table remembers of an allocation: its size and its site's slot. */
struct live_entry {
    u64 bytes_alloc;
    u32 slot;
    u32 pad;
};

/* Every small counter, one element per CPU, groups at the *_AT offsets. */
struct counters {
    u64 v[NR_COUNTERS];
};
