/* The floor of the bpf_stats measurement: raw tracepoint programs that do nothing. */
int noop_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    return 0;
}

int noop_free(struct bpf_raw_tracepoint_args *ctx)
{
    return 0;
}
