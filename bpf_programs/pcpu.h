/* Keys and values of pcpu_live and pcpu_sites, as pcpu_bpf/bpf/maps.py reads them. */

struct live_entry {
    u64 call_site;
    u64 size;
    u64 bytes_alloc;
    u8 atomic;
    u8 reserved;
    u8 pad[6];
};

struct site_key {
    u64 call_site;
    u8 atomic;
    u8 reserved;
    u8 pad[6];
};

struct site_value {
    u64 allocations;
    u64 requested_bytes;
    u64 allocated_bytes;
    u64 tracked;
    u64 tracked_bytes;
    u64 frees;
    u64 freed_bytes;
};
