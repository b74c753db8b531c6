"""The owner behind a generic helper: the first caller on an allocation's kernel stack that
is not a known helper.

The busiest percpu call sites are plumbing: ``__percpu_counter_init_many`` allocates for
mm_init, xfrm4_net_init, ip6_route_net_init and many more; ``bpf_map_alloc_percpu`` for
every per-CPU map type. The owner of such an allocation is the first function on its
stack, walking outwards from the call site, that is not in `DEFAULT_HELPERS` (or the
names a user adds). For a call site that is no helper, the owner is the call site. The
rule works on addresses (`owner_address`), as the programs do: names become code ranges
once, where the loader reads kallsyms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pcpu_bpf.model.layout import OWNER_STACK_DEPTH

# Whether `pcpu-bpf serve` and pcpu-top take stacks at the helpers unless told: no. With
# owners on, each allocation at a helper costs a stack walk, about four times a whole
# allocation's handling without (docs/benchmarks.md, "Owners").
DEFAULT_OWNERS = False

# Functions that allocate percpu memory on behalf of their caller, as named in
# /proc/kallsyms of 6.18 (a helper the compiler inlined is not on the stack, and not
# needed here). Each one's owner is whoever called it.
DEFAULT_HELPERS: tuple[str, ...] = (
    # lib/percpu_counter.c: percpu_counter_init() and friends
    "__percpu_counter_init_many",
    # lib/percpu-refcount.c
    "percpu_ref_init",
    # kernel/bpf: the map types' common allocators
    "bpf_map_alloc_percpu",
    "bpf_map_init_elem_count",
    "pcpu_freelist_init",
    "bpf_lru_init",
    "bpf_mem_alloc_init",
    "prefill_mem_cache",
    "alloc_bulk",
    "__alloc",
    # net/core/dev.c: every network device's per-CPU refcount and statistics
    "alloc_netdev_mqs",
    "netdev_alloc_pcpu_stats",
    # kernel/cgroup, mm/memcontrol.c, kernel/sched/psi.c: every cgroup's per-CPU state
    "css_rstat_init",
    "cgroup_rstat_init",
    "psi_cgroup_alloc",
    "obj_cgroup_alloc",
    "memcg_list_lru_alloc",
)


def helper_set(extra: Iterable[str] = ()) -> frozenset[str]:
    """The default helpers and ``extra`` (names a user adds), as one set."""
    return frozenset(DEFAULT_HELPERS) | frozenset(n.strip() for n in extra if n.strip())


# Where a helper's code lies: [start, end) address ranges (Symbolizer.ranges).
Ranges = Sequence[tuple[int, int]]


def in_ranges(addr: int, ranges: Ranges) -> bool:
    """Whether ``addr`` lies in one of ``ranges``."""
    return any(start <= addr < end for start, end in ranges)


def owner_address(call_site: int, stack: Sequence[int], ranges: Ranges) -> tuple[int, str | None]:
    """What the programs key an allocation at address ``call_site`` by, from its kernel
    stack (return addresses, innermost first, as bpf_get_stack gives them after
    OWNER_STACK_SKIP): (owner address, None), or (0, why) when the call site is a helper
    and no owner was found, or (0, None) when the call site is no helper. The owner is the
    first frame above the call site's own (found by address) that lies in no helper."""
    if not in_ranges(call_site, ranges):
        return 0, None
    if not stack:
        return 0, "no_stack"
    found = False
    for ip in stack[:OWNER_STACK_DEPTH]:
        if not ip:
            break
        if not found:
            found = ip == call_site
            continue
        if not in_ranges(ip, ranges):
            return ip, None
    return 0, "only_helpers" if found else "site_not_on_stack"
