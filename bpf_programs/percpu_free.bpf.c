/* percpu:percpu_free_percpu -> pcpu_live, pcpu_sites, pcpu_live_count, pcpu_untracked.
 * Mirrors pcpu_bpf/aggregation.py Aggregator._free. */
#include "pcpu_maps.h"

int on_free(struct bpf_raw_tracepoint_args *ctx)
{
    u64 ptr = ctx->args[ARG_FREE_PTR];
    struct live_entry *found, entry;
    struct site_key key = {};
    struct site_value *site;
    u32 idx = LIVE_DELETED, zero = 0;
    u64 *n;

    found = pcpu_live.lookup(&ptr);
    if (!found) {
        n = pcpu_untracked.lookup(&zero);
        if (n)
            *n += 1;
        return 0;
    }
    entry = *found;
    pcpu_live.delete(&ptr);
    n = pcpu_live_count.lookup(&idx);
    if (n)
        *n += 1;

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
