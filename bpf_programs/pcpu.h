/* Keys and values of the maps, as pcpu_bpf/bpf/maps.py decodes them (the struct formats
 * of pcpu_bpf/model/layout.py; the loader checks their sizes against the maps). */

/* A site: where the allocation was asked for (call_site), who it is for (owner: the first
 * caller outside the known helpers, 0 for a call site that is no helper or when owners are
 * off) and from which cgroup (the allocating task's cgroup v2 id). */
struct site_key {
    u64 call_site;
    u64 owner;
    u64 cgroup_id;
    u8 atomic;
    u8 reserved;
    u8 pad[6];
};

/* One call site's counters; shared by every CPU, so changed with atomic adds. The live
 * allocations are allocations - dropped - frees (dropped: not tracked, table full), their
 * sizes requested_bytes - dropped_bytes - freed_bytes: one unit's bytes, as the live
 * entries keep them. The memcg extension is counted for tracked allocations only.
 * What allocations write and what frees write sit in two 64-byte halves: a free on one
 * CPU then does not take the cache line an allocation on another CPU is writing. The key,
 * written once before the slot is published, shares the frees' half. */
struct site_record {
    struct site_key key;
    u64 frees;
    u64 freed_bytes;
    u64 freed_extension_bytes;
    u64 pad_free;
    u64 allocations;
    u64 requested_bytes;
    u64 dropped;
    u64 dropped_bytes;
    u64 extension_bytes;
    u64 pad_alloc[3];
};

/* What the live table remembers of an allocation: when it was made (CLOCK_BOOTTIME ns),
 * its size and memcg extension (32 bits hold any real one: pcpu_alloc() refuses more
 * than 32 KiB), its site's slot, and its offset in its chunk (below the unit size):
 * ptr - off is the same for every allocation of one chunk. */
struct live_entry {
    u64 alloc_ns;
    u32 size;
    u32 extension;
    u32 slot;
    u32 off;
};

/* Shared by the CPUs: the pointer shift, base_addr + off - ptr, the same for every
 * allocation (written once, then only read), and the chunks created that found the chunk
 * table full (rare: an atomic add). */
struct chunk_info {
    u64 pointer_shift;
    u64 table_full;
};

/* The known helpers' code, [start, end) each, as the loader found them in kallsyms. */
struct helper_ranges {
    u64 nr;
    u64 start[MAX_HELPER_RANGES];
    u64 end[MAX_HELPER_RANGES];
};

/* A kernel stack as bpf_get_stack writes it: return addresses, innermost first. */
struct owner_stack {
    u64 ip[OWNER_STACK_DEPTH];
};

/* Every small counter, one element per CPU, groups at the *_AT offsets. */
struct counters {
    u64 v[NR_COUNTERS];
};
