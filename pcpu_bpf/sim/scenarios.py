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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.kernel.cgroups import cgroup_label
from pcpu_bpf.model.events import (
    GFP_ACCOUNT,
    GFP_ATOMIC,
    GFP_BPF_MAP,
    GFP_KERNEL,
    GFP_KERNEL_ACCOUNT,
    GFP_NOWAIT,
    ROOT_CGROUP_ID,
)
from pcpu_bpf.model.layout import NR_COUNTERS, OWNER_STACK_DEPTH
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
            "alloc_bulk",
            "dst_cache_init",
            "bpf_prog_alloc_no_stats",
            "pcpu_freelist_init",
            "bpf_map_init_elem_count",
            "htab_map_alloc",
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


class SimCgroups:
    """The simulated host's cgroups: an id per cgroup made (never reused, as the kernel's),
    its path, and which were removed; labelled as the live backend labels them."""

    FIRST_ID = 1000  # ids of the cgroups a scenario makes; the root's is ROOT_CGROUP_ID

    def __init__(self) -> None:
        self._paths: dict[int, str] = {ROOT_CGROUP_ID: "/"}
        self._removed: set[int] = set()
        self._next = self.FIRST_ID

    def make(self, path: str) -> int:
        """A new cgroup at ``path``: its id."""
        cgroup_id, self._next = self._next, self._next + 1
        self._paths[cgroup_id] = path
        return cgroup_id

    def remove(self, cgroup_id: int) -> None:
        self._removed.add(cgroup_id)

    def labels(self, ids: Iterable[int]) -> dict[int, str]:
        """Each id's path, " (deleted)" once removed; "id:<id>" for one never made."""
        return {i: cgroup_label(i, self._paths.get(i), deleted=i in self._removed) for i in ids}


class Workload:
    """What a scenario drives: the allocator, a seeded RNG, its own live objects, and the
    cgroups of the simulated tasks (``cgroup``: the one allocating now)."""

    def __init__(self, allocator: Allocator, rng: random.Random) -> None:
        self.allocator = allocator
        self.rng = rng
        self.cgroups = SimCgroups()
        self.cgroup = ROOT_CGROUP_ID
        # Cgroups removed but never freed (zombies), as cgroup.stat nr_dying_descendants.
        self.dying_cgroups = 0

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


def _creating(w: Workload, keep: int, alive: int) -> bool:
    """Whether to create (else destroy) an object, pulling the live count toward `keep`.

    p = keep / (keep + alive) is 1/2 at `alive == keep` and leans toward destroying
    above it, so the count holds steady (spread about sqrt(keep)) instead of
    random-walking upward the way "create below a floor, else 50/50" does.
    """
    return w.rng.random() * (keep + alive) < keep


def _groups(w: Workload, make_group: Callable[[], Sequence[Request]], keep: int) -> Steps:
    """Create objects made of several allocations (a namespace, a map), keeping about
    `keep` of them alive; an object is freed whole."""
    alive: list[list[int]] = []
    while True:
        if _creating(w, keep, len(alive)):
            ptrs: list[int] = []
            for req in make_group():
                ptr = w.alloc(req)
                if ptr is not None:
                    ptrs.append(ptr)
                yield
            alive.append(ptrs)
        else:
            for ptr in alive.pop(w.rng.randrange(len(alive))):
                w.free(ptr)
                yield


def _waves(w: Workload, count: tuple[int, int], pick: Callable[[], Request]) -> Steps:
    """Waves: a random number (in ``range(*count)``) of requests, then free them all in
    random order, again and again."""
    while True:
        live: list[int] = []
        for _ in range(w.rng.randrange(*count)):
            ptr = w.alloc(pick())
            if ptr is not None:
                live.append(ptr)
            yield
        w.rng.shuffle(live)
        for ptr in live:
            w.free(ptr)
            yield


STEADY_KEEP = 400


def steady(w: Workload) -> Steps:
    """Forks and mounts at a stable rate: live memory hovers around a constant."""
    live: list[int] = []
    mounts = Request("alloc_vfsmnt", 8, 8, offset=0xE7)
    while True:
        if _creating(w, STEADY_KEEP, len(live)):
            req = w.rng.choice(FORK + (mounts,))
            ptr = w.alloc(req)
            if ptr is not None:
                live.append(ptr)
        else:
            w.free(w.pop_random(live))
        yield


def netns_churn(w: Workload) -> Steps:
    """Network namespaces created and destroyed (containers starting and stopping)."""
    return _groups(w, lambda: NETNS, keep=20)


# What a removed memory cgroup keeps while it is a zombie (offline, not yet freed because
# page cache pages still charge it): everything but its percpu_ref, which goes when it is
# taken offline (percpu_ref_kill(): the percpu counters are freed once it is atomic).
# The memcg's statistics and its per-node ones, its rstat counters and its writeback
# domain's percpu counter are freed only with the memcg (mem_cgroup_css_free()), as a
# 6.18 kernel's trace of a removed memory cgroup holding page cache shows.
MEMCG_FREED_OFFLINE = frozenset({"percpu_ref_init"})
ZOMBIE_SHARE = 0.02


def memcg_churn(w: Workload) -> Steps:
    """Memory cgroups come and go (containers); one in 50 removed stays a zombie, its
    per-CPU statistics live on with nothing left to free them, so live grows.

    About 16 zombie allocations a second at the sim backend's 2,000 ops/s: the
    262,144-entry live table lasts about 4.5 hours of a demo daemon. Zombies are counted
    dying (``Workload.dying_cgroups``), as cgroup v2 counts them."""
    alive: list[list[tuple[Request, int | None]]] = []
    while True:
        if _creating(w, 10, len(alive)):
            made: list[tuple[Request, int | None]] = []
            for req in MEMCG:
                made.append((req, w.alloc(req)))
                yield
            alive.append(made)
        else:
            made = alive.pop(w.rng.randrange(len(alive)))
            zombie = w.rng.random() < ZOMBIE_SHARE
            w.dying_cgroups += zombie
            # A zombie keeps its statistics: those pointers are dropped, never freed.
            for req, ptr in made:
                if zombie and req.site not in MEMCG_FREED_OFFLINE:
                    continue
                if ptr is not None:
                    w.free(ptr)
                yield


def bpf_maps(w: Workload) -> Steps:
    """Per-CPU BPF array maps: each map is N allocations of round_up(value_size, 8)."""

    def one_map() -> list[Request]:
        value_size = w.rng.choice((8, 16, 24, 64, 256, 1024, 4096))
        entries = w.rng.choice((1, 4, 16, 64))
        size = -(-value_size // 8) * 8
        return [Request("bpf_map_alloc_percpu", size, 8, GFP_BPF_MAP, 0x59)] * entries

    return _groups(w, one_map, keep=8)


LEAK_EVERY = 2000  # steps between two leaked allocations
LEAK_POD_OPENS = 8  # opens by one pod before it is restarted (removed, made anew)


def leak(w: Workload) -> Steps:
    """Steady background plus one driver that allocates on every open and never frees.

    The driver is opened at step 250 and then every LEAK_EVERY (2,000) steps: once a
    second at the sim daemon's 2,000 ops/s, so the 262,144-entry live table (minus
    steady's ~400) fills after about 261,700 s, three days. Step n has seen
    (n - 250) // 2000 + 1 leaks, whatever the seed. The driver is opened by a pod's
    tasks (cgroup /kubepods/leaky-pod-N), restarted every LEAK_POD_OPENS opens: the
    leaked allocations of each removed pod stay, with its cgroup marked deleted.
    """
    background = steady(w)
    leaky = Request("leaky_driver_open", 192, 8, GFP_KERNEL_ACCOUNT, offset=0x3C)
    until_open = 250
    pods = 1
    pod = w.cgroups.make(f"/kubepods/leaky-pod-{pods}")
    opens = 0
    while True:
        until_open -= 1
        if until_open:
            yield next(background)
            continue
        if opens == LEAK_POD_OPENS:
            w.cgroups.remove(pod)
            pods, opens = pods + 1, 0
            pod = w.cgroups.make(f"/kubepods/leaky-pod-{pods}")
        w.cgroup = pod
        w.alloc(leaky)
        w.cgroup = ROOT_CGROUP_ID
        opens += 1
        until_open = LEAK_EVERY
        yield


# bpf_mem_cache refills (kernel/bpf/memalloc.c alloc_bulk(), from irq_work) of per-CPU
# bpf_mem_alloc caches: __alloc_percpu_gfp(unit size, 8, GFP_NOWAIT | __GFP_NOWARN |
# __GFP_ACCOUNT); the larger unit sizes.
ATOMIC_BULK = tuple(
    Request("alloc_bulk", size, 8, GFP_NOWAIT | GFP_ACCOUNT, offset=0x1D4)
    for size in (1024, 2048, 4096)
)
# dst_cache_init(cache, GFP_ATOMIC) from tunnels set up in atomic context
# (net/core/dst_cache.c): alloc_percpu_gfp(struct dst_cache_pcpu), 40 bytes on x86-64.
ATOMIC_DST_CACHE = Request("dst_cache_init", 40, 8, GFP_ATOMIC, offset=0x2A)


def atomic_pressure(w: Workload) -> Steps:
    """Waves of atomic requests (no sleeping, so no page population) that outrun the
    balance work: the empty populated pool runs dry and atomic allocations fail.

    Each wave makes 150 to 250 requests (about 2 MiB when all succeed), far more than
    the handful of empty populated pages the balance work keeps; then everything is
    freed, the balance work depopulates the emptied chunks, and the next wave again
    finds the pool nearly dry. So failures recur for as long as it runs.
    """
    sites = ATOMIC_BULK + (ATOMIC_DST_CACHE,)
    return _waves(w, (150, 251), lambda: w.rng.choice(sites))


# Large per-CPU array map values: array_map_alloc() allocates each element with
# bpf_map_alloc_percpu(map, round_up(value_size, 8), 8, GFP_USER | __GFP_NOWARN), and
# per-CPU values may be up to PCPU_MIN_UNIT_SIZE (32 KiB), so 8-32 KiB requests are real.
LARGE_MAP_VALUE_SIZES = (8192, 16384, 24576, 32768)


def chunk_churn(w: Workload) -> Steps:
    """Waves of large allocations that need new chunks, then free everything, so surplus
    chunks are destroyed by the balance work."""

    def large_value() -> Request:
        size = w.rng.choice(LARGE_MAP_VALUE_SIZES)
        return Request("bpf_map_alloc_percpu", size, 8, GFP_BPF_MAP, 0x59)

    return _waves(w, (60, 140), large_value)


FRAGMENTING_BURST = (20, 41)  # namespaces made in one burst
FRAGMENTING_KEEP = 600  # long-lived processes held at most (the oldest goes after)


def fragmentation(w: Workload) -> Steps:
    """Bursts of short-lived network namespaces (CI jobs, rsync over ssh), each with a
    process forked beside it; the namespaces all go, but one process in three stays (a
    daemon), and those small survivors, scattered over the pages the burst used, keep the
    pages populated and mostly free.

    The free space inside used pages (the breakdown's free_in_used_pages) grows far
    beyond the empty pages the balance work keeps; at most FRAGMENTING_KEEP processes
    stay, the oldest going when a new one stays.
    """
    kept: list[list[int]] = []
    while True:
        burst: list[int] = []
        for _ in range(w.rng.randrange(*FRAGMENTING_BURST)):
            for req in NETNS:
                ptr = w.alloc(req)
                if ptr is not None:
                    burst.append(ptr)
                yield
            process: list[int] = []
            for req in FORK:
                ptr = w.alloc(req)
                if ptr is not None:
                    process.append(ptr)
                yield
            if w.rng.random() < 1 / 3:
                kept.append(process)
            else:
                burst += process
        while len(kept) > FRAGMENTING_KEEP:
            burst += kept.pop(0)
        w.rng.shuffle(burst)
        for ptr in burst:
            w.free(ptr)
            yield


# Allocated before tracing begins (`Simulation(before_tracing=True)`), so they are what
# the breakdown calls untraced_live: the boot's own users (the initial network namespace,
# the first processes and mounts, the root and system memory cgroups).
BOOT = NETNS + FORK * 12 + MEMCG * 2 + (Request("alloc_vfsmnt", 8, 8, offset=0xE7),) * 30
# The profiler's own percpu memory, allocated by its loader before its programs attach
# (the breakdown's profiler part): the per-CPU counters element and the owners' stack
# scratch element, each of the five programs' run statistics and recursion guard, and
# each of the two preallocated hash maps' free-list heads, element count, spare-element
# pointer and percpu_counter (bpf/footprint.py; 684 bytes per CPU, tests/test_breakdown.py
# checks the sum).
PROFILER = (
    (
        Request("bpf_map_alloc_percpu", 8 * NR_COUNTERS, 8, GFP_BPF_MAP, 0x59),
        Request("bpf_map_alloc_percpu", 8 * OWNER_STACK_DEPTH, 8, GFP_BPF_MAP, 0x59),
    )
    + (Request("bpf_prog_alloc_no_stats", 32, 8), Request("bpf_prog_alloc_no_stats", 4, 4)) * 5
    + (
        Request("pcpu_freelist_init", 16, 8),
        Request("bpf_map_init_elem_count", 8, 8),
        Request("htab_map_alloc", 8, 8),
        Request("__percpu_counter_init_many", 4, 4),
    )
    * 2
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named workload and how often the allocator's balance work runs under it."""

    name: str
    run: Callable[[Workload], Steps]
    balance: str = "every:32"
    # Whether the workload makes cgroups: the simulated host then reports its dying ones.
    cgroups: bool = False

    @property
    def description(self) -> str:
        return " ".join((self.run.__doc__ or "").split("\n\n")[0].split())


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", steady),
        Scenario("netns-churn", netns_churn),
        Scenario("memcg-churn", memcg_churn, cgroups=True),
        Scenario("bpf-maps", bpf_maps),
        Scenario("leak", leak),
        # The kernel's balance work is a workqueue item: under a burst it runs late.
        Scenario("atomic-pressure", atomic_pressure, balance="every:64"),
        Scenario("chunk-churn", chunk_churn),
        Scenario("fragmentation", fragmentation),
    )
}


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`; ScenarioError listing the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ScenarioError(f"unknown scenario {name!r}; known scenarios: {known}") from None
