#include <uapi/linux/errno.h>
#include "pcpu.h"

/* Every map is preallocated: a map that allocated percpu memory while an event is
 * handled would re-enter these tracepoints, and the kernel drops nested runs. No map
 * grows with the CPU count but the one counters element (small and fixed).
 *
 * Sites: pcpu_site_slots maps a site key to a slot of pcpu_sites, an array whose records
 * carry their key, so the reader needs only the array; a live entry keeps the slot, so a
 * free finds its record without a second hash lookup. Slots are handed out in order by
 * pcpu_site_count. Records are shared by all CPUs: atomic adds.
 *
 * The per-CPU counters: each slot has one writer program, and a program never nests on
 * its own CPU, so plain += is safe there.
 *
 * Chunks: pcpu_chunks holds the base_addr of each chunk created since tracing began and
 * not destroyed, 0 in a free slot; arrays hold no percpu memory, and the rare chunk
 * events can afford a scan. pcpu_chunk_info's shift turns a live entry's ptr - off into
 * its chunk's base_addr (pcpu.h).
 *
 * Owners (OWNERS=1): at a call site inside a known helper (pcpu_helpers, filled by the
 * loader from kallsyms), the kernel stack goes into a per-CPU scratch element (a stack
 * that big on the program's own stack would cost a private stack of percpu memory) and
 * the site is keyed by the first frame above the call site's that lies in no helper. */
BPF_TABLE("hash", u64, struct live_entry, pcpu_live, LIVE_CAPACITY);
BPF_TABLE("hash", struct site_key, u32, pcpu_site_slots, SITE_CAPACITY);
BPF_TABLE("array", u32, struct site_record, pcpu_sites, SITE_CAPACITY);
BPF_TABLE("array", u32, u64, pcpu_site_count, 1);
BPF_TABLE("percpu_array", u32, struct counters, pcpu_counters, 1);
BPF_TABLE("array", u32, struct helper_ranges, pcpu_helpers, 1);
BPF_TABLE("percpu_array", u32, struct owner_stack, pcpu_owner_stack, 1);
BPF_TABLE("array", u32, u64, pcpu_chunks, CHUNK_CAPACITY);
BPF_TABLE("array", u32, struct chunk_info, pcpu_chunk_info, 1);

static __always_inline struct counters *counters(void)
{
    u32 zero = 0;

    return pcpu_counters.lookup(&zero);
}

/* Add one to a per-CPU counter, on a path too rare to keep the element in a register. */
static __always_inline void count(u32 at)
{
    struct counters *c = counters();

    if (c && at < NR_COUNTERS)
        c->v[at] += 1;
}

/* All in 64 bits, the bound checked on the value returned: with a u32 result LLVM
 * compares one zero-extended copy and indexes with another, whose range the verifier of
 * Linux 6.1 does not know ("R0 unbounded memory access"). */
static __always_inline u64 size_slot(u64 size)
{
    u64 v = size - 1;
    u64 bits = 0, slot;

    if (size <= (1ULL << SIZE_BUCKET_SHIFT))
        return 0;
    if (v >> 32) { v >>= 32; bits += 32; }
    if (v >> 16) { v >>= 16; bits += 16; }
    if (v >> 8) { v >>= 8; bits += 8; }
    if (v >> 4) { v >>= 4; bits += 4; }
    if (v >> 2) { v >>= 2; bits += 2; }
    if (v >> 1) { v >>= 1; bits += 1; }
    bits += v;
    slot = bits - SIZE_BUCKET_SHIFT;
    if (slot > NR_SIZE_SLOTS - 1)
        slot = NR_SIZE_SLOTS - 1;
    return slot;
}

/* The slot of a site seen for the first time; -1 when the site table is full. */
static __always_inline int new_site(struct site_key *key, u32 *slot)
{
    u32 *found;
    struct site_record *site;
    u64 *count, n;

    *slot = 0;
    count = pcpu_site_count.lookup(slot);
    if (!count)
        return -1;
    n = __sync_fetch_and_add(count, 1);
    if (n >= SITE_CAPACITY)
        return -1;
    *slot = n;
    site = pcpu_sites.lookup(slot);
    if (!site)
        return -1;
    site->key = *key;
    if (pcpu_site_slots.insert(key, slot) == 0)
        return 0;
    /* Another CPU added the same key meanwhile: use its slot (this one stays empty). */
    found = pcpu_site_slots.lookup(key);
    if (!found)
        return -1;
    *slot = *found;
    return 0;
}

#if OWNERS
/* Whether addr lies in a known helper's code: a bounded scan of the loader's ranges.
 * Looked up at each call (an array lookup the verifier inlines), not kept in a register. */
static __always_inline int in_helper(u64 addr)
{
    u32 zero = 0, i;
    struct helper_ranges *h = pcpu_helpers.lookup(&zero);

    if (!h)
        return 0;
    for (i = 0; i < MAX_HELPER_RANGES; i++) {
        if (i >= h->nr)
            break;
        if (addr >= h->start[i] && addr < h->end[i])
            return 1;
    }
    return 0;
}

/* The owner of an allocation at call_site: 0 when the call site is no helper; else the
 * first frame above the call site's own that is no helper, or 0 with the reason counted.
 * Few values live at once: every one more is a spill, and a stack past 48 bytes costs
 * the program a private stack of percpu memory. bpf_get_stack zeroes the frames it did
 * not fill. */
static __always_inline u64 owner_of(struct bpf_raw_tracepoint_args *ctx, u64 call_site)
{
    u32 zero = 0, i, at = OWNER_STACK_DEPTH;
    struct owner_stack *s;

    if (!in_helper(call_site))
        return 0;
    s = pcpu_owner_stack.lookup(&zero);
    if (!s)
        return 0;
    if (bpf_get_stack(ctx, s->ip, sizeof(s->ip), OWNER_STACK_SKIP) <= 0) {
        count(OWNER_UNRESOLVED_AT + OWNER_NO_STACK);
        return 0;
    }
    for (i = 0; i < OWNER_STACK_DEPTH; i++) {
        if (s->ip[i] == call_site) {
            at = i;
            break;
        }
    }
    if (at == OWNER_STACK_DEPTH) {
        count(OWNER_UNRESOLVED_AT + OWNER_SITE_NOT_ON_STACK);
        return 0;
    }
    for (i = at + 1; i < OWNER_STACK_DEPTH; i++) {
        u64 ip = s->ip[i];

        if (!ip)
            break;
        if (!in_helper(ip))
            return ip;
    }
    count(OWNER_UNRESOLVED_AT + OWNER_ONLY_HELPERS);
    return 0;
}
#endif

/* The slot of this allocation's site, found or handed out; -1 when the site table is
 * full. The key lives only in here: its stack is reused for the live entry after, and a
 * stack of at most 48 bytes gets no private stack from the JIT, which would cost percpu
 * memory (bpf/footprint.py). */
static __always_inline s64 site_slot(struct bpf_raw_tracepoint_args *ctx, u64 owner)
{
    struct site_key key = {};
    u32 slot, *found;

#ifdef ARG_ALLOC_CALL_SITE
    key.call_site = ctx->args[ARG_ALLOC_CALL_SITE];
#endif
    key.owner = owner;
    key.cgroup_id = bpf_get_current_cgroup_id();
    key.atomic = (u8)ctx->args[ARG_ALLOC_IS_ATOMIC] != 0;
    key.reserved = (u8)ctx->args[ARG_ALLOC_RESERVED] != 0;
    found = pcpu_site_slots.lookup(&key);
    if (found)
        return *found;
    if (new_site(&key, &slot))
        return -1;
    return slot;
}

/* Count a live entry's allocation as freed against its site. */
static __always_inline void count_free(struct live_entry *entry)
{
    struct site_record *site = pcpu_sites.lookup(&entry->slot);

    if (!site)
        return;
    __sync_fetch_and_add(&site->frees, 1);
    __sync_fetch_and_add(&site->freed_bytes, entry->size);
    __sync_fetch_and_add(&site->freed_extension_bytes, entry->extension);
}

static __always_inline struct chunk_info *chunk_info(void)
{
    u32 zero = 0;

    return pcpu_chunk_info.lookup(&zero);
}

/* The pointer shift is the same for every allocation: written once, then only read, so
 * the CPUs share its cache line. The fields are read after the lookup: read before it,
 * one is spilled across the call, and a stack past 48 bytes costs the program a private
 * stack of percpu memory. */
static __always_inline void note_chunk_shift(struct bpf_raw_tracepoint_args *ctx)
{
    struct chunk_info *info = chunk_info();
    u64 shift;

    if (!info)
        return;
    shift = ctx->args[ARG_ALLOC_BASE_ADDR] + ctx->args[ARG_ALLOC_OFF] - ctx->args[ARG_ALLOC_PTR];
    if (info->pointer_shift != shift)
        info->pointer_shift = shift;
}

int on_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    struct live_entry *old;
    struct site_record *site;
    struct counters *c;
    u64 owner = 0;
    s64 slot;
    int err;

    c = counters();
    if (!c)
        return 0;
    c->v[SIZES_AT + size_slot(ctx->args[ARG_ALLOC_SIZE])] += 1;
    c->v[SIZES_AT + SIZE_SUM_SLOT] += ctx->args[ARG_ALLOC_SIZE];
    note_chunk_shift(ctx);

    /* Nothing is kept in a register across the stack walk (the size is read again, the
     * counters looked up again): each value kept would be a spill, and a stack past 48
     * bytes (the verifier rounds it up to 64) costs the program a private stack of percpu
     * memory. */
#if OWNERS && defined(ARG_ALLOC_CALL_SITE)
    owner = owner_of(ctx, ctx->args[ARG_ALLOC_CALL_SITE]);
#endif
    slot = site_slot(ctx, owner);
    if (slot < 0) {
        count(DROPS_AT + DROP_SITE_TABLE_FULL);
        return 0;
    }
    {
        /* Read as u64, never through void *: ptr is void __seg_gs * on 6.18, and LLVM
         * aborts on that address-space cast. */
        u64 ptr = ctx->args[ARG_ALLOC_PTR];
        struct live_entry entry = {
            .size = ctx->args[ARG_ALLOC_SIZE], .slot = slot, .off = ctx->args[ARG_ALLOC_OFF]};

        /* entry.slot doubles as the array key. */
        site = pcpu_sites.lookup(&entry.slot);
        if (!site)
            return 0;
        __sync_fetch_and_add(&site->allocations, 1);
        __sync_fetch_and_add(&site->requested_bytes, entry.size);
        /* Percpu bytes are the size on every unit; bytes_alloc adds the memcg extension
         * (slab memory, not Percpu), counted apart. Without bytes_alloc there is none. */
#ifdef ARG_ALLOC_BYTES_ALLOC
        entry.extension =
            ctx->args[ARG_ALLOC_BYTES_ALLOC] - ctx->args[ARG_ALLOC_SIZE] * NR_POSSIBLE_CPUS;
#endif
        /* CLOCK_BOOTTIME: it counts through suspend (a leak ages while the machine
         * sleeps), never jumps with the wall clock, and is the same for every process,
         * so a daemon that adopts the pinned table reads the same clock. */
        entry.alloc_ns = bpf_ktime_get_boot_ns();
        err = pcpu_live.insert(&ptr, &entry);
        if (err == -EEXIST) {
            /* The pointer is live already: its free was lost (a recursion miss), and
             * the allocator handed it out again, so the old allocation was freed. */
            old = pcpu_live.lookup(&ptr);
            if (old)
                count_free(old);
            err = pcpu_live.update(&ptr, &entry);
        }
        if (err) {
            count(DROPS_AT + DROP_LIVE_TABLE_FULL);
            __sync_fetch_and_add(&site->dropped, 1);
            __sync_fetch_and_add(&site->dropped_bytes, entry.size);
            return 0;
        }
        if (entry.extension)
            __sync_fetch_and_add(&site->extension_bytes, entry.extension);
    }
    return 0;
}

int on_free(struct bpf_raw_tracepoint_args *ctx)
{
    u64 ptr = ctx->args[ARG_FREE_PTR];
    struct live_entry *found, entry;
    struct counters *c;

    found = pcpu_live.lookup(&ptr);
    if (!found) {
        c = counters();
        if (c)
            c->v[UNTRACKED_FREES_AT] += 1;
        return 0;
    }
    entry = *found;
    pcpu_live.delete(&ptr);
    count_free(&entry);
    return 0;
}

int on_alloc_fail(struct bpf_raw_tracepoint_args *ctx)
{
    u64 size = ctx->args[ARG_FAIL_SIZE];
    u32 atomic = (u8)ctx->args[ARG_FAIL_IS_ATOMIC] != 0;
    u32 reserved = (u8)ctx->args[ARG_FAIL_RESERVED] != 0;
    struct counters *c = counters();

    if (!c)
        return 0;
    c->v[FAILURES_AT + atomic * FAILURE_ATOMIC_WEIGHT + reserved] += 1;
    c->v[FAIL_SIZES_AT + size_slot(size)] += 1;
    c->v[FAIL_SIZES_AT + SIZE_SUM_SLOT] += size;
    return 0;
}

/* Remember a new chunk in the first free slot; -1 when every slot is taken. A base of 0
 * (none) is not remembered. */
static __always_inline int remember_chunk(u64 base)
{
    u32 i, key;
    u64 *slot;

    for (i = 0; i < CHUNK_CAPACITY; i++) {
        key = i;
        slot = pcpu_chunks.lookup(&key);
        if (!slot)
            return -1;
        if (__sync_val_compare_and_swap(slot, 0, base) == 0)
            return 0;
    }
    return -1;
}

int on_create_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    struct counters *c = counters();
    struct chunk_info *info;

    if (c)
        c->v[CHUNKS_AT + CHUNK_CREATED] += 1;
    if (!remember_chunk(ctx->args[ARG_CREATE_CHUNK_BASE_ADDR]))
        return 0;
    info = chunk_info();
    if (info)
        __sync_fetch_and_add(&info->table_full, 1);
    return 0;
}

/* Forget a destroyed chunk (one created before tracing began is in no slot). */
int on_destroy_chunk(struct bpf_raw_tracepoint_args *ctx)
{
    u64 base = ctx->args[ARG_DESTROY_CHUNK_BASE_ADDR];
    struct counters *c = counters();
    u64 *slot;
    u32 i, key;

    if (c)
        c->v[CHUNKS_AT + CHUNK_DESTROYED] += 1;
    if (!base)
        return 0;
    for (i = 0; i < CHUNK_CAPACITY; i++) {
        key = i;
        slot = pcpu_chunks.lookup(&key);
        if (!slot)
            return 0;
        if (__sync_val_compare_and_swap(slot, base, 0) == base)
            return 0;
    }
    return 0;
}
