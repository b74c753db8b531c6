/* percpu:percpu_free_percpu -> live, sites, live_count, untracked.
 * Mirrors pcpu_bpf/aggregation.py Aggregator._free. */
#include "pcpu_maps.h"

int on_free(struct bpf_raw_tracepoint_args *ctx)
{
    u64 ptr = ctx->args[ARG_FREE_PTR];
    struct live_entry *found, entry;
    struct site_key key = {};
    struct site_value *site;
    u32 idx = 0;
    s64 *nr_live;
    u64 *nr_untracked;

    found = pcpu_live.lookup(&ptr);
    if (!found) {
        nr_untracked = pcpu_untracked.lookup(&idx);
        if (nr_untracked)
            *nr_untracked += 1;
        return 0;
    }
    entry = *found;
    pcpu_live.delete(&ptr);
    nr_live = pcpu_live_count.lookup(&idx);
    if (nr_live)
        __sync_fetch_and_sub(nr_live, 1);

    key.call_site = entry.call_site;
    key.atomic = entry.atomic;
    key.reserved = entry.reserved;
    site = pcpu_sites.lookup(&key);
    if (!site)
        return 0;
    site->frees += 1;
    site->freed_bytes += entry.bytes_alloc;
    __sync_fetch_and_sub(&site->live_allocations, 1);
    __sync_fetch_and_sub(&site->live_bytes, entry.bytes_alloc);
    return 0;
}
