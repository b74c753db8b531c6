"""Named, seeded workloads for the simulator, shaped after what real kernels allocate.

A scenario is an endless generator that performs one allocator operation per step
(alloc or free; balance work runs by the allocator's own policy) through a `Workload`.
Each scenario carries the call sites it uses as a small kallsyms of its own, so the sim
backend symbolizes through the same code as the live one. Call sites, sizes and
alignments of the kernel users below were read off a 6.18 kernel's trace (`unshare -n
true`, forks, per-CPU BPF maps); the memcg sizes are plausible, not measured.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.events import GFP_ATOMIC, GFP_BPF_MAP, GFP_KERNEL, GFP_KERNEL_ACCOUNT, GFP_NOWAIT
from pcpu_bpf.sim.allocator import Allocator

# Functions the scenarios allocate from, with made-up but kallsyms-shaped addresses.
SYMBOLS: dict[str, int] = {
    name: 0xFFFFFFFF81000000 + 0x10000 * i
    for i, name in enumerate(
        [
            "mm_init",
            "__percpu_counter_init_many",
            "alloc_vfsmnt",
            "ipv4_mib_init_net",
            "inet6_net_init",
            "ipv6_add_dev",
            "xfrm_state_init",
            "xfrm_net_init",
            "synproxy_net_init",
            "sock_inuse_init_net",
            "register_netdevice",
            "nf_conntrack_init_net",
            "alloc_netdev_mqs",
            "mem_cgroup_alloc",
            "alloc_mem_cgroup_per_node_info",
            "percpu_ref_init",
            "cgroup_rstat_init",
            "bpf_map_alloc_percpu",
            "leaky_driver_open",
            "bpf_mem_alloc_init",
            "blk_mq_alloc_queue_stats",
            "pcpu_freelist_init",
        ]
    )
}


@dataclass(frozen=True, slots=True)
class Request:
    """One percpu request: caller (function + offset of the return address), size, align, gfp."""

    site: str
    size: int
    align: int
    gfp: int = GFP_KERNEL
    offset: int = 0x27

    @property
    def call_site(self) -> int:
        return SYMBOLS[self.site] + self.offset


# One fork: mm_init's rss counters and the percpu counters of the new mm.
FORK = (
    Request("mm_init", 16, 8, offset=0x2E7),
    Request("__percpu_counter_init_many", 16, 4, GFP_KERNEL_ACCOUNT),
)
# One network namespace (`unshare -n`), as traced on 6.18: 19 requests over 10 functions.
NETNS = (
    Request("ipv4_mib_init_net", 80, 8, offset=0x4C),
    Request("ipv4_mib_init_net", 80, 8, offset=0x8E),
    Request("ipv4_mib_init_net", 304, 8, offset=0xD0),
    Request("ipv4_mib_init_net", 240, 8, offset=0x112),
    Request("ipv4_mib_init_net", 128, 8, offset=0x154),
    Request("ipv4_mib_init_net", 1088, 8, offset=0x196),
    Request("inet6_net_init", 80, 8, offset=0x61),
    Request("inet6_net_init", 80, 8, offset=0xA3),
    Request("inet6_net_init", 56, 8, offset=0xE5),
    Request("inet6_net_init", 304, 8, offset=0x127),
    Request("ipv6_add_dev", 304, 8, offset=0x1B0),
    Request("xfrm_state_init", 8, 8),
    Request("xfrm_net_init", 264, 8, offset=0x3A),
    Request("synproxy_net_init", 20, 4),
    Request("sock_inuse_init_net", 260, 4, offset=0x1F),
    Request("register_netdevice", 16, 16, offset=0x5A8),
    Request("nf_conntrack_init_net", 52, 4, offset=0x9C),
    Request("alloc_netdev_mqs", 4, 4, offset=0x2B1),
    Request("__percpu_counter_init_many", 4, 4, GFP_KERNEL_ACCOUNT),
)
# One memory cgroup.
MEMCG = (
    Request("mem_cgroup_alloc", 1504, 8, GFP_KERNEL_ACCOUNT, offset=0xB2),
    Request("alloc_mem_cgroup_per_node_info", 656, 8, GFP_KERNEL_ACCOUNT, offset=0x6D),
    Request("percpu_ref_init", 8, 8, GFP_KERNEL_ACCOUNT, offset=0x45),
    Request("cgroup_rstat_init", 160, 8, offset=0x33),
    Request("__percpu_counter_init_many", 16, 4, GFP_KERNEL_ACCOUNT),
)


class Workload:
    """What a scenario drives: the allocator, a seeded RNG, and its own live objects."""

    def __init__(self, allocator: Allocator, rng: random.Random) -> None:
        self.allocator = allocator
        self.rng = rng

    def alloc(self, req: Request, *, gfp: int | None = None) -> int | None:
        """Allocate for `req`; None when the allocator failed (a fail event was emitted)."""
        return self.allocator.alloc(
            req.size, req.align, gfp=req.gfp if gfp is None else gfp, call_site=req.call_site
        )

    def free(self, ptr: int) -> None:
        self.allocator.free(ptr)

    def pop_random(self, live: list[int]) -> int:
        """Remove and return a random element of `live` (order does not matter)."""
        i = self.rng.randrange(len(live))
        live[i], live[-1] = live[-1], live[i]
        return live.pop()


Steps = Iterator[None]


def _groups(w: Workload, group: tuple[Request, ...], keep: int) -> Steps:
    """Create objects made of `group` allocations, keeping about `keep` of them alive."""
    alive: list[list[int]] = []
    while True:
        if len(alive) < keep or w.rng.random() < 0.5:
            ptrs: list[int] = []
            for req in group:
                ptr = w.alloc(req)
                if ptr is not None:
                    ptrs.append(ptr)
                yield
            alive.append(ptrs)
        elif alive:
            for ptr in alive.pop(w.rng.randrange(len(alive))):
                w.free(ptr)
                yield


def steady(w: Workload) -> Steps:
    """Forks and mounts at a stable rate: live memory hovers around a constant."""
    live: list[int] = []
    mounts = Request("alloc_vfsmnt", 8, 8, offset=0xE7)
    while True:
        if len(live) < 400 or w.rng.random() < 0.5:
            req = w.rng.choice(FORK + (mounts,))
            ptr = w.alloc(req)
            if ptr is not None:
                live.append(ptr)
        else:
            w.free(w.pop_random(live))
        yield


def netns_churn(w: Workload) -> Steps:
    """Network namespaces created and destroyed (containers starting and stopping)."""
    return _groups(w, NETNS, keep=20)


def memcg_churn(w: Workload) -> Steps:
    """Memory cgroups come and go; a fraction never go (zombie memcgs), so live grows."""
    alive = _groups(w, MEMCG, keep=10)
    zombies: list[int] = []
    for _ in alive:
        yield
        if w.rng.random() < 0.02:  # a dying memcg pinned by a page cache page
            for req in MEMCG[:2]:
                ptr = w.alloc(req)
                if ptr is not None:
                    zombies.append(ptr)
                yield


def bpf_maps(w: Workload) -> Steps:
    """Per-CPU BPF array maps: each map is N allocations of round_up(value_size, 8)."""
    maps: list[list[int]] = []
    while True:
        if len(maps) < 8 or w.rng.random() < 0.5:
            value_size = w.rng.choice((8, 16, 24, 64, 256, 1024, 4096))
            entries = w.rng.choice((1, 4, 16, 64))
            req = Request("bpf_map_alloc_percpu", -(-value_size // 8) * 8, 8, GFP_BPF_MAP, 0x59)
            ptrs = []
            for _ in range(entries):
                ptr = w.alloc(req)
                if ptr is not None:
                    ptrs.append(ptr)
                yield
            maps.append(ptrs)
        else:
            for ptr in maps.pop(w.rng.randrange(len(maps))):
                w.free(ptr)
                yield


def leak(w: Workload) -> Steps:
    """Steady background plus one driver that allocates on every open and never frees."""
    background = steady(w)
    leaky = Request("leaky_driver_open", 192, 8, GFP_KERNEL_ACCOUNT, offset=0x3C)
    while True:
        if w.rng.random() < 0.1:
            w.alloc(leaky)
            yield
        else:
            yield next(background)


def atomic_pressure(w: Workload) -> Steps:
    """Bursts of atomic requests (no sleeping, so no page population) that outrun the
    balance work: the empty populated pool runs dry and atomic allocations fail."""
    live: list[int] = []
    burst_sites = (
        Request("bpf_mem_alloc_init", 2048, 8),
        Request("blk_mq_alloc_queue_stats", 4096, 8),
        Request("pcpu_freelist_init", 1024, 8),
    )
    while True:
        for _ in range(w.rng.randrange(4, 24)):
            req = w.rng.choice(burst_sites)
            ptr = w.alloc(req, gfp=w.rng.choice((GFP_ATOMIC, GFP_NOWAIT)))
            if ptr is not None:
                live.append(ptr)
            yield
        while len(live) > 64:
            w.free(w.pop_random(live))
            yield


def chunk_churn(w: Workload) -> Steps:
    """Waves of large allocations that need new chunks, then free everything, so surplus
    chunks are destroyed by the balance work."""
    while True:
        live = []
        for _ in range(w.rng.randrange(60, 140)):
            size = w.rng.choice((8192, 16384, 24576, 32768))
            ptr = w.alloc(Request("pcpu_freelist_init", size, 8, GFP_KERNEL, 0x81))
            if ptr is not None:
                live.append(ptr)
            yield
        w.rng.shuffle(live)
        for ptr in live:
            w.free(ptr)
            yield


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named workload and how often the allocator's balance work runs under it."""

    name: str
    run: Callable[[Workload], Steps]
    balance: str = "every:32"

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").split("\n\n")[0].replace("\n", " ")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", steady),
        Scenario("netns-churn", netns_churn),
        Scenario("memcg-churn", memcg_churn),
        Scenario("bpf-maps", bpf_maps),
        Scenario("leak", leak),
        # The kernel's balance work is a workqueue item: under a burst it runs late.
        Scenario("atomic-pressure", atomic_pressure, balance="every:64"),
        Scenario("chunk-churn", chunk_churn),
    )
}


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`; ScenarioError listing the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ScenarioError(f"unknown scenario {name!r}; known scenarios: {known}") from None
