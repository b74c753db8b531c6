/* percpu:percpu_create_chunk and percpu:percpu_destroy_chunk -> chunks. */
#include "pcpu_maps.h"

int on_create_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    u32 idx = CHUNK_CREATED;
    u64 *n = pcpu_chunks.lookup(&idx);

    if (n)
        *n += 1;
    return 0;
}

int on_destroy_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    u32 idx = CHUNK_DESTROYED;
    u64 *n = pcpu_chunks.lookup(&idx);

    if (n)
        *n += 1;
    return 0;
}
