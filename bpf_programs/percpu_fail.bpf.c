/* percpu:percpu_alloc_percpu_fail -> failures, failed_sizes. */
#include "pcpu_maps.h"

static __always_inline void add_failed_size(u32 idx, u64 n)
{
    u64 *v = pcpu_fail_sizes.lookup(&idx);

    if (v)
        *v += n;
}

int on_alloc_fail(struct bpf_raw_tracepoint_args *ctx)
{
    u64 size = ctx->args[ARG_FAIL_SIZE];
    u32 atomic = (u8)ctx->args[ARG_FAIL_IS_ATOMIC] != 0;
    u32 reserved = (u8)ctx->args[ARG_FAIL_RESERVED] != 0;
    u32 idx = atomic * 2 + reserved;
    u64 *n = pcpu_failures.lookup(&idx);

    if (n)
        *n += 1;
    add_failed_size(size_slot(size), 1);
    add_failed_size(SIZE_SUM_SLOT, size);
    return 0;
}
