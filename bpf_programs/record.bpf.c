#include "record.h"

/* `pcpu-bpf record`: every percpu event, whole, into one ring buffer that the recorder
 * drains to a JSON Lines file. Nothing is aggregated here. An event that finds the ring
 * full is counted in pcpu_rec_lost (one counter per CPU, plain +=: a program never
 * nests on its own CPU) and the recorder writes the count down. Reserving in a ring
 * buffer allocates no percpu memory, so these programs never re-enter themselves. */
BPF_RINGBUF_OUTPUT(pcpu_rec_ring, RING_PAGES);
BPF_TABLE("percpu_array", u32, u64, pcpu_rec_lost, 1);

static __always_inline struct recorded_event *reserve(u8 kind)
{
    struct recorded_event *e = pcpu_rec_ring.ringbuf_reserve(sizeof(struct recorded_event));
    u32 zero = 0;
    u64 *lost;

    if (!e) {
        lost = pcpu_rec_lost.lookup(&zero);
        if (lost)
            *lost += 1;
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = bpf_ktime_get_boot_ns();
    e->pid_tgid = bpf_get_current_pid_tgid();
    e->cgroup = bpf_get_current_cgroup_id();
    e->cpu = bpf_get_smp_processor_id();
    e->kind = kind;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    return e;
}

int rec_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    struct recorded_event *e = reserve(RECORD_KIND_ALLOC);

    if (!e)
        return 0;
    if ((u8)ctx->args[ARG_ALLOC_RESERVED])
        e->flags |= RECORD_RESERVED;
    if ((u8)ctx->args[ARG_ALLOC_IS_ATOMIC])
        e->flags |= RECORD_ATOMIC;
    e->size = ctx->args[ARG_ALLOC_SIZE];
    e->align = ctx->args[ARG_ALLOC_ALIGN];
    e->base_addr = ctx->args[ARG_ALLOC_BASE_ADDR];
    e->off = (s32)ctx->args[ARG_ALLOC_OFF];
    /* Read as u64, never through void *: ptr is void __seg_gs * on 6.18. */
    e->ptr = ctx->args[ARG_ALLOC_PTR];
#ifdef ARG_ALLOC_CALL_SITE
    e->call_site = ctx->args[ARG_ALLOC_CALL_SITE];
    e->flags |= RECORD_HAS_CALL_SITE;
#endif
#ifdef ARG_ALLOC_BYTES_ALLOC
    e->bytes_alloc = ctx->args[ARG_ALLOC_BYTES_ALLOC];
    e->flags |= RECORD_HAS_BYTES_ALLOC;
#endif
#ifdef ARG_ALLOC_GFP_FLAGS
    e->gfp_flags = ctx->args[ARG_ALLOC_GFP_FLAGS];
    e->flags |= RECORD_HAS_GFP;
#endif
    pcpu_rec_ring.ringbuf_submit(e, 0);
    return 0;
}

int rec_free(struct bpf_raw_tracepoint_args *ctx)
{
    struct recorded_event *e = reserve(RECORD_KIND_FREE);

    if (!e)
        return 0;
    e->base_addr = ctx->args[ARG_FREE_BASE_ADDR];
    e->off = (s32)ctx->args[ARG_FREE_OFF];
    e->ptr = ctx->args[ARG_FREE_PTR];
    pcpu_rec_ring.ringbuf_submit(e, 0);
    return 0;
}

int rec_alloc_fail(struct bpf_raw_tracepoint_args *ctx)
{
    struct recorded_event *e = reserve(RECORD_KIND_FAIL);

    if (!e)
        return 0;
    if ((u8)ctx->args[ARG_FAIL_RESERVED])
        e->flags |= RECORD_RESERVED;
    if ((u8)ctx->args[ARG_FAIL_IS_ATOMIC])
        e->flags |= RECORD_ATOMIC;
    e->size = ctx->args[ARG_FAIL_SIZE];
    e->align = ctx->args[ARG_FAIL_ALIGN];
    pcpu_rec_ring.ringbuf_submit(e, 0);
    return 0;
}

int rec_create_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    struct recorded_event *e = reserve(RECORD_KIND_CREATE_CHUNK);

    if (!e)
        return 0;
    e->base_addr = ctx->args[ARG_CREATE_CHUNK_BASE_ADDR];
    pcpu_rec_ring.ringbuf_submit(e, 0);
    return 0;
}

int rec_destroy_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    struct recorded_event *e = reserve(RECORD_KIND_DESTROY_CHUNK);

    if (!e)
        return 0;
    e->base_addr = ctx->args[ARG_DESTROY_CHUNK_BASE_ADDR];
    pcpu_rec_ring.ringbuf_submit(e, 0);
    return 0;
}
