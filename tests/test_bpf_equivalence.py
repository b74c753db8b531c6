"""The BPF programs and the reference aggregator agree on identical event streams.

The programs are loaded without attaching, each event runs through its program with
BPF_PROG_TEST_RUN (arguments in TP_PROTO order, derived from a tracefs fixture), spread
over the possible CPUs so per-CPU values really are summed, negative live counts
included. The same events go to pcpu_bpf.model.aggregation.Aggregator; the tables and the
Snapshots must be equal. Capacities are small so both tables overflow.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup_v2 import cgroup_id, own_cgroup
from prog_test_run import run_raw_tp, unattached_backend

from pcpu_bpf.backends.bpf import PAGE_SIZE
from pcpu_bpf.bpf.loader import PROGRAMS
from pcpu_bpf.bpf.maps import read_live_records
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.model.ages import AgeFold
from pcpu_bpf.model.aggregation import Aggregator
from pcpu_bpf.model.events import (
    GFP_ATOMIC,
    GFP_KERNEL,
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.layout import CHUNK_CAPACITY
from pcpu_bpf.model.live_chunks import traced_chunk_map
from pcpu_bpf.model.ranking import DEFAULT_MAX_CGROUPS
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.model.tables import SnapshotContext, site_key
from pcpu_bpf.sim.allocator import DEFAULT_PER_CPU_DELTA, Allocator
from pcpu_bpf.sim.geometry import CONFIG_S

pytestmark = pytest.mark.privileged

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"
LIVE_CAPACITY = 64
SITE_CAPACITY = 16
SITES = [0xFFFFFFFF81000000 + i * 0x1234 for i in range(40)]  # 40 sites > 16 slots
SIZES = [4, 8, 12, 16, 24, 40, 64, 100, 256, 1000, 3000, 4096, 8192, 32768]
EVENT_NAME = {
    PercpuAlloc: "percpu_alloc_percpu",
    PercpuFree: "percpu_free_percpu",
    PercpuAllocFail: "percpu_alloc_percpu_fail",
    PercpuCreateChunk: "percpu_create_chunk",
    PercpuDestroyChunk: "percpu_destroy_chunk",
}


def fake_symbolize(addr: int) -> str:
    """Several addresses fold into one name, as offsets inside one function do."""
    return f"fn{addr % 7}"


def sim_stream(seed: int, ops: int = 3000, warmup: int = 300) -> list[Event]:
    """A simulator run; events of the warm-up are dropped, so their frees are untracked."""
    events: list[Event] = []
    alloc = Allocator(CONFIG_S, balance="every:50", sink=events.append)
    rng = random.Random(seed)
    live: list[int] = []
    start = 0
    for i in range(warmup + ops):
        if i == warmup:
            start = len(events)
        if live and rng.random() < 0.42:
            alloc.free(live.pop(rng.randrange(len(live))))
            continue
        if rng.random() < 0.03:
            alloc.fail_next_populate()
        if rng.random() < 0.01:
            alloc.fail_next_chunk_create()
        ptr = alloc.alloc(
            rng.choice(SIZES),
            rng.choice([4, 8, 64]),
            reserved=rng.random() < 0.05,
            gfp=GFP_ATOMIC if rng.random() < 0.1 else GFP_KERNEL,
            call_site=rng.choice(SITES),
        )
        if ptr is not None:
            live.append(ptr)
    return events[start:]


def base_of(ptr: int) -> int:
    """The base_addr of a chunk whose offset 0 is ``ptr``, as the simulator makes them."""
    return (ptr - DEFAULT_PER_CPU_DELTA) & (1 << 64) - 1


def edge_events() -> list[Event]:
    """What the simulator never emits: every failure kind, sizes off the bucket range, a
    pointer allocated twice."""
    out: list[Event] = [
        PercpuAllocFail(reserved=r, is_atomic=a, size=s, align=8)
        for r in (False, True)
        for a in (False, True)
        for s in (0, 4, 5, 32768, 32769, 1 << 40)
    ]
    for i, size in enumerate((0, 1, 4, 5, 8, 9, 65536, 1 << 33)):
        ptr = 0x9000 + 8 * i
        out.append(PercpuAlloc(SITES[0], False, True, size, 8, base_of(ptr), 0, ptr, size * 3, 0))
    out.append(PercpuFree(0, 0, 0x9000))
    out.append(PercpuFree(0, 0, 0xDEAD0))  # never allocated: untracked
    # The same pointer allocated again without a free between (a free lost to a
    # recursion miss): the live entry is replaced, as the aggregator does.
    out.append(PercpuAlloc(SITES[1], False, False, 16, 8, base_of(0x9008), 0, 0x9008, 64, 0))
    return out


def chunk_events() -> list[Event]:
    """More chunks than the chunk table holds, some destroyed, one destroyed that it never
    held, a base of 0; allocations in them give each entry its offset."""
    bases = [0xFFFFC90000000000 + (i + 1) * 0x40000 for i in range(CHUNK_CAPACITY + 3)]
    out: list[Event] = [PercpuCreateChunk(0), PercpuDestroyChunk(0)]
    out += [PercpuCreateChunk(b) for b in bases]  # the last 3 find the table full
    out += [PercpuDestroyChunk(b) for b in bases[10:20]]
    out.append(PercpuDestroyChunk(0xFFFFC9FFFFFC0000))  # created before tracing began
    out += [PercpuCreateChunk(b) for b in bases[:3]]  # again: into the freed slots
    # The simulator's pointers: base_addr + off + per_cpu_delta, as these.
    for i, off in enumerate((0, 4, 4096, 0x3FFFC)):
        base = bases[20 + i]
        ptr = (base + off + DEFAULT_PER_CPU_DELTA) & (1 << 64) - 1
        assert base_of(ptr - off) == base
        out.append(PercpuAlloc(SITES[2], False, False, 4, 4, base, off, ptr, 0, 0))
    return out


def without_new_fields(ev: Event) -> Event:
    """The event as a kernel before 5.19 reports it."""
    if isinstance(ev, PercpuAlloc):
        return dataclasses.replace(ev, call_site=None, bytes_alloc=None, gfp_flags=None)
    return ev


def run_in_bpf(backend, layout, events: list[Event]) -> None:
    fds = backend.program_fds
    ncpu = backend.possible_cpus
    for i, ev in enumerate(events):
        name = EVENT_NAME[type(ev)]
        args = [int(getattr(ev, f)) for f in layout.fields[name]]
        assert run_raw_tp(fds[PROGRAMS[name]], args, cpu=i % ncpu) == 0


def normalized(s: Snapshot) -> Snapshot:
    return dataclasses.replace(
        s,
        timestamp=0.0,
        kernel_stats=None,
        programs=None,
        maps=None,
        fields_available=None,
        tracking_start_time=None,
        profiler_percpu_bytes=None,
        ages=None,
        breakdown=None,
        chunk_map=None,
    )


@pytest.fixture(params=["6.18", "5.15"])
def kernel(request: pytest.FixtureRequest) -> Iterator[tuple[str, object, object]]:

    root = FIXTURES / request.param
    backend = unattached_backend(
        live_capacity=LIVE_CAPACITY,
        site_capacity=SITE_CAPACITY,
        tracefs_root=root,
        symbolizer=fake_symbolize,
    )
    try:
        yield request.param, backend, read_layout(root)
    finally:
        backend.close()


def test_stream_exercises_everything() -> None:
    events = sim_stream(seed=1)
    kinds = {type(e) for e in events}
    assert kinds == set(EVENT_NAME), kinds
    assert sum(isinstance(e, PercpuAlloc) for e in events) > LIVE_CAPACITY * 4
    assert len({e.call_site for e in events if isinstance(e, PercpuAlloc)}) > SITE_CAPACITY


@pytest.mark.parametrize("seed", [1, 2])
def test_bpf_equals_reference_aggregator(kernel, seed: int) -> None:
    version, backend, layout = kernel
    edge = edge_events()
    # Edge events first, while the tables have room (a pointer allocated twice replaces
    # its entry); its last one again at the end, when the live table is full.
    events = edge + chunk_events() + sim_stream(seed) + edge[-1:]
    if version == "5.15":
        events = [without_new_fields(e) for e in events]
    # The programs key each allocation by the running task's cgroup: this process's.
    home = cgroup_id(own_cgroup())
    events = [
        dataclasses.replace(e, cgroup_id=home) if isinstance(e, PercpuAlloc) else e for e in events
    ]
    agg = Aggregator(
        fake_symbolize,
        possible_cpus=backend.possible_cpus,
        live_capacity=LIVE_CAPACITY,
        site_capacity=SITE_CAPACITY,
    )
    for event in events:
        agg.apply(event)
    run_in_bpf(backend, layout, events)

    tables = backend.read_tables()
    assert tables == agg.tables
    assert tables.dropped["live_table_full"] > 0
    assert tables.dropped["chunk_table_full"] >= 3
    assert len(tables.traced_chunks) > CHUNK_CAPACITY - 10
    # Entry by entry, offsets included (the chunk of an entry is ptr - off + shift).
    live = backend.loaded_set.maps["pcpu_live"]
    got = {p: (n, x, o) for p, _, n, x, _, o in read_live_records(live, LIVE_CAPACITY)}
    want = {p: (e.size, e.extension, e.off) for p, e in agg.live_table().items()}
    assert got == want
    # Without call_site every allocation is "unknown": at most 4 site keys, no site drops.
    assert (tables.dropped["site_table_full"] > 0) == (version == "6.18")
    assert tables.untracked_frees > 0
    assert sum(tables.failures) > 4

    snap = backend.snapshot()
    ctx = SnapshotContext(
        backend="bpf",
        kernel=snap.kernel,
        timestamp=0.0,
        nr_units=backend.possible_cpus,  # no percpu_stats here: the possible CPUs
        memcg_extension=version == "6.18",
        cgroup_labels=lambda ids: {i: own_cgroup() for i in ids},
        max_cgroups=DEFAULT_MAX_CGROUPS,
    )
    assert normalized(snap) == normalized(agg.snapshot(ctx))
    # The chunk map: the traced chunks drawn from the live entries in them.
    entries = [(p, e.off, e.size) for p, e in agg.live_table().items()]
    t = agg.tables
    want_map = traced_chunk_map(
        t.traced_chunks, t.chunk_shift, entries, None, page_size=PAGE_SIZE, dropped=t.dropped
    )
    assert snap.chunk_map == want_map
    assert sum(c.nr_alloc for c in want_map.chunks) > 4  # chunk_events' and the simulator's
    # The age walk reads the live table back: every entry was made a moment ago, so all
    # bytes are in the youngest band, site by site as the aggregator holds them.
    fold = AgeFold(0.0)
    fold.add((e.key, e.size, 0.0) for e in agg.live_entries())
    sim_ages = fold.ages(
        nr_units=backend.possible_cpus,
        site_of=lambda k: site_key(k, fake_symbolize),
    )
    assert snap.ages is not None
    assert snap.ages.bytes_by_age == sim_ages.bytes_by_age
    assert set(snap.ages.oldest_seconds) == set(sim_ages.oldest_seconds)
    assert all(0 <= age < 60 for age in snap.ages.oldest_seconds.values())
    assert snap.maps is not None
    assert snap.maps["live"].entries == agg.tables.live_entries == LIVE_CAPACITY
    assert snap.maps["sites"].entries == len(agg.tables.sites)
    assert snap.programs is not None
    assert all(p.recursion_misses == 0 for p in snap.programs.values())
    if version == "5.15":
        assert {k.call_site for k in snap.sites} == {"unknown"}
        assert snap.fields_available is not None
        assert not snap.fields_available[("percpu_alloc_percpu", "bytes_alloc")]
