/* One recorded percpu event, as `pcpu-bpf record` decodes it (RECORD_EVENT_FORMAT of
 * pcpu_bpf/model/layout.py; 112 bytes). Fields an event kind does not have are 0. */
struct recorded_event {
    u64 ts_ns;      /* bpf_ktime_get_boot_ns() */
    u64 pid_tgid;
    u64 cgroup;     /* cgroup v2 id */
    u64 call_site;
    u64 size;
    u64 align;
    u64 base_addr;
    u64 ptr;
    u64 bytes_alloc;
    u64 gfp_flags;
    s32 off;
    u32 cpu;
    u8 kind;        /* RECORD_KIND_* */
    u8 flags;       /* RECORD_RESERVED, RECORD_ATOMIC, RECORD_HAS_* */
    u8 pad[6];
    char comm[16];
};
