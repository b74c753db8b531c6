#include <uapi/linux/errno.h>
#include "pcpu.h"

/* Every map is preallocated: a map that allocated percpu memory while an event is
 * handled would re-enter these tracepoints, and the kernel drops nested runs.
 * Each per-CPU value has one writer program and a program never nests on its own CPU,
 * so plain += needs no atomics; what two programs change is kept as two counters
 * (tracked/frees, inserted/deleted) that the reader subtracts. */
BPF_TABLE("hash", u64, struct live_entry, pcpu_live, LIVE_CAPACITY);
BPF_TABLE("percpu_hash", struct site_key, struct site_value, pcpu_sites, SITE_CAPACITY);
BPF_TABLE("percpu_array", u32, u64, pcpu_sizes, NR_HISTOGRAM_SLOTS);
BPF_TABLE("percpu_array", u32, u64, pcpu_failures, NR_FAILURE_CLASSES);
BPF_TABLE("percpu_array", u32, u64, pcpu_fail_sizes, NR_HISTOGRAM_SLOTS);
BPF_TABLE("percpu_array", u32, u64, pcpu_chunks, NR_CHUNK_SLOTS);
BPF_TABLE("percpu_array", u32, u64, pcpu_drops, NR_DROP_REASONS);
BPF_TABLE("percpu_array", u32, u64, pcpu_untracked, 1);
BPF_TABLE("percpu_array", u32, u64, pcpu_live_count, NR_LIVE_COUNT_SLOTS);

static __always_inline void add(u64 *counter, u64 n)
{
    if (counter)
        *counter += n;
}

static __always_inline void add_size(u32 slot, u64 n)
{
    add(pcpu_sizes.lookup(&slot), n);
}

static __always_inline void add_failed_size(u32 slot, u64 n)
{
    add(pcpu_fail_sizes.lookup(&slot), n);
}

static __always_inline void add_drop(u32 reason)
{
    add(pcpu_drops.lookup(&reason), 1);
}

static __always_inline void add_live_count(u32 slot)
{
    add(pcpu_live_count.lookup(&slot), 1);
}

static __always_inline void add_chunk(u32 slot)
{
    add(pcpu_chunks.lookup(&slot), 1);
}

static __always_inline u32 size_slot(u64 size)
{
    u64 v = size - 1;
    u32 bits = 0;

    if (size <= (1ULL << SIZE_BUCKET_SHIFT))
        return 0;
    if (v >> 32) { v >>= 32; bits += 32; }
    if (v >> 16) { v >>= 16; bits += 16; }
    if (v >> 8) { v >>= 8; bits += 8; }
    if (v >> 4) { v >>= 4; bits += 4; }
    if (v >> 2) { v >>= 2; bits += 2; }
    if (v >> 1) { v >>= 1; bits += 1; }
    bits += v;
    if (bits - SIZE_BUCKET_SHIFT > NR_SIZE_SLOTS - 1)
        return NR_SIZE_SLOTS - 1;
    return bits - SIZE_BUCKET_SHIFT;
}

int on_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    struct site_key key = {};
    struct site_value zero = {}, *site;
    struct live_entry entry = {};
    /* Read as u64, never through void *: ptr is void __seg_gs * on 6.18, and LLVM
     * aborts on that address-space cast. */
    u64 ptr = ctx->args[ARG_ALLOC_PTR];
    u64 size = ctx->args[ARG_ALLOC_SIZE];
    u64 used;
    int err;

#ifdef ARG_ALLOC_CALL_SITE
    key.call_site = ctx->args[ARG_ALLOC_CALL_SITE];
#endif
#ifdef ARG_ALLOC_BYTES_ALLOC
    used = ctx->args[ARG_ALLOC_BYTES_ALLOC];
#else
    used = size * NR_POSSIBLE_CPUS;
#endif
    key.atomic = (u8)ctx->args[ARG_ALLOC_IS_ATOMIC] != 0;
    key.reserved = (u8)ctx->args[ARG_ALLOC_RESERVED] != 0;

    add_size(size_slot(size), 1);
    add_size(SIZE_SUM_SLOT, size);

    site = pcpu_sites.lookup(&key);
    if (!site) {
        pcpu_sites.insert(&key, &zero);
        site = pcpu_sites.lookup(&key);
        if (!site) {
            add_drop(DROP_SITE_TABLE_FULL);
            return 0;
        }
    }
    site->allocations += 1;
    site->requested_bytes += size;
    site->allocated_bytes += used;

    entry.call_site = key.call_site;
    entry.size = size;
    entry.bytes_alloc = used;
    entry.atomic = key.atomic;
    entry.reserved = key.reserved;
    err = pcpu_live.insert(&ptr, &entry);
    if (err == -EEXIST)
        err = pcpu_live.update(&ptr, &entry);
    else if (!err)
        add_live_count(LIVE_INSERTED);
    if (err) {
        add_drop(DROP_LIVE_TABLE_FULL);
        return 0;
    }
    site->tracked += 1;
    site->tracked_bytes += used;
    return 0;
}

int on_free(struct bpf_raw_tracepoint_args *ctx)
{
    u64 ptr = ctx->args[ARG_FREE_PTR];
    struct live_entry *found, entry;
    struct site_key key = {};
    struct site_value *site;
    u32 zero = 0;

    found = pcpu_live.lookup(&ptr);
    if (!found) {
        add(pcpu_untracked.lookup(&zero), 1);
        return 0;
    }
    entry = *found;
    pcpu_live.delete(&ptr);
    add_live_count(LIVE_DELETED);

    key.call_site = entry.call_site;
    key.atomic = entry.atomic;
    key.reserved = entry.reserved;
    site = pcpu_sites.lookup(&key);
    if (!site)
        return 0;
    site->frees += 1;
    site->freed_bytes += entry.bytes_alloc;
    return 0;
}

int on_alloc_fail(struct bpf_raw_tracepoint_args *ctx)
{
    u64 size = ctx->args[ARG_FAIL_SIZE];
    u32 atomic = (u8)ctx->args[ARG_FAIL_IS_ATOMIC] != 0;
    u32 reserved = (u8)ctx->args[ARG_FAIL_RESERVED] != 0;
    u32 slot = atomic * FAILURE_ATOMIC_WEIGHT + reserved;

    add(pcpu_failures.lookup(&slot), 1);
    add_failed_size(size_slot(size), 1);
    add_failed_size(SIZE_SUM_SLOT, size);
    return 0;
}

int on_create_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    add_chunk(CHUNK_CREATED);
    return 0;
}

int on_destroy_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    add_chunk(CHUNK_DESTROYED);
    return 0;
}
