/* percpu:percpu_alloc_percpu -> pcpu_sizes, pcpu_sites, pcpu_live, pcpu_live_count,
 * pcpu_drops. Order of operations mirrors pcpu_bpf/aggregation.py Aggregator._alloc. */
#include <uapi/linux/errno.h>
#include "pcpu_maps.h"

/* bcc rewrites map.lookup() only in functions of this file, not in macros or headers. */
static __always_inline void add_size(u32 idx, u64 n)
{
    u64 *v = pcpu_sizes.lookup(&idx);

    if (v)
        *v += n;
}

static __always_inline void add_drop(u32 reason)
{
    u64 *v = pcpu_drops.lookup(&reason);

    if (v)
        *v += 1;
}

int on_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    struct site_key key = {};
    struct site_value zero = {}, *site;
    struct live_entry entry = {};
    u64 ptr = ctx->args[ARG_ALLOC_PTR];
    u64 size = ctx->args[ARG_ALLOC_SIZE];
    u32 idx = LIVE_INSERTED;
    u64 used, *inserted;
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
    if (err == -EEXIST) {
        /* A free we never saw (a recursion miss): replace, as the aggregator does. */
        err = pcpu_live.update(&ptr, &entry);
    } else if (!err) {
        inserted = pcpu_live_count.lookup(&idx);
        if (inserted)
            *inserted += 1;
    }
    if (err) {
        add_drop(DROP_LIVE_TABLE_FULL);
        return 0;
    }
    site->tracked += 1;
    site->tracked_bytes += used;
    return 0;
}
