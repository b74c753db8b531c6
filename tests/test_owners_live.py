"""Owners and cgroups on the live kernel: who an allocation is for, and which cgroup made it.

- A workload run inside a fresh cgroup v2 is that cgroup's, exactly; once the cgroup is
  removed its live allocations stay with it, marked deleted.
- With owners on, the allocations of per-CPU array maps are owned by the map-creation
  path, not by the generic bpf_map_alloc_percpu, with exact counts.
- The owner and cgroup paths of the programs equal the reference aggregator's on the same
  events and stacks (BPF_PROG_TEST_RUN).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import bcc
import pytest
from cgroup_v2 import cgroup_id, fresh_cgroup, own_cgroup, remove
from prog_test_run import run_raw_tp, unattached_backend
from waiting import wait_until

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.loader import PROGRAMS
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.kernel.cgroups import DELETED
from pcpu_bpf.model.aggregation import Aggregator
from pcpu_bpf.model.breakdown import nr_units
from pcpu_bpf.model.events import GFP_KERNEL, Event, PercpuAlloc, PercpuFree
from pcpu_bpf.model.layout import OWNER_STACK_DEPTH, OWNER_STACK_SKIP
from pcpu_bpf.model.owners import helper_set
from pcpu_bpf.model.snapshot import SiteRecord, Snapshot
from pcpu_bpf.model.symbolizer import Symbolizer
from pcpu_bpf.model.tables import SnapshotContext

pytestmark = pytest.mark.privileged

HELPER = "bpf_map_alloc_percpu"
ENTRIES = (7, 5)  # two per-CPU array maps: one percpu allocation per element


@pytest.fixture(scope="module")
def symbols() -> Symbolizer:
    return Symbolizer.from_file("/proc/kallsyms")


@pytest.fixture
def owned() -> Iterator[object]:
    from pcpu_bpf.backends.bpf import BpfBackend

    b = BpfBackend(owners=True)
    try:
        yield b
    finally:
        b.close()


def _owners_of(s: Snapshot, call_site: str) -> dict[str, SiteRecord]:
    out: dict[str, SiteRecord] = {}
    for key, record in s.sites.items():
        if key.call_site == call_site:
            out[key.owner] = out.get(key.owner, SiteRecord()) + record
    return out


def _cgroup(s: Snapshot, label: str) -> SiteRecord:
    assert s.cgroups is not None
    return s.cgroups.get(label, SiteRecord())


def test_a_cgroups_maps_are_its_own_and_owned_by_the_map_creation_path(owned) -> None:
    name = f"pcpu-bpf-test-{uuid.uuid4().hex[:8]}"
    before = owned.snapshot()
    with fresh_cgroup(name) as path:
        fds = [syscalls.create_percpu_array(64, n) for n in ENTRIES]
    try:
        # A new cgroup id is named by the next walk of the hierarchy (at most one a
        # second): until then it reads "id:<id>".
        def named() -> Snapshot | None:
            s = owned.snapshot()
            return s if path in (s.cgroups or {}) else None

        after = wait_until(named, interval=0.2, what=f"a snapshot naming {path}")
        # Exactly what the workload made, and nothing else, is the cgroup's.
        mine = _cgroup(after, path)
        assert mine.allocations == sum(ENTRIES), after.cgroups
        assert mine.live_allocations == sum(ENTRIES)
        assert after.kernel_stats is not None
        units = nr_units(after.kernel_stats.percpu_stats, owned.possible_cpus)
        assert mine.live_bytes == sum(ENTRIES) * 64 * units
        # Owned by the map-creation path, not by the generic helper.
        grown = {
            owner: r.allocations - _owners_of(before, HELPER).get(owner, SiteRecord()).allocations
            for owner, r in _owners_of(after, HELPER).items()
        }
        grown = {owner: n for owner, n in grown.items() if n}
        assert HELPER not in grown, grown
        assert sum(grown.values()) == sum(ENTRIES), grown
        assert all("array" in owner for owner in grown), grown
        assert after.owner_unresolved == before.owner_unresolved

        # Removed, the cgroup keeps its live allocations, marked deleted.
        remove(path)
        gone = owned.snapshot()
        assert path not in (gone.cgroups or {})
        kept = _cgroup(gone, path + DELETED)
        assert (kept.allocations, kept.live_allocations) == (sum(ENTRIES), sum(ENTRIES))
    finally:
        for fd in fds:
            syscalls.close(fd)

    def all_freed() -> Snapshot | None:
        s = owned.snapshot()
        return s if _cgroup(s, path + DELETED).frees == sum(ENTRIES) else None

    freed = wait_until(all_freed, interval=0.1, what="the frees of the removed cgroup's maps")
    assert _cgroup(freed, path + DELETED).live_allocations == 0


# ---- BPF_PROG_TEST_RUN: the programs' owner and cgroup paths against the reference ----

PROBE = r"""
struct frames { u64 ip[OWNER_STACK_DEPTH]; };
BPF_ARRAY(probe_frames, struct frames, 1);
int probe(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0;
    struct frames *f = probe_frames.lookup(&zero);

    if (f)
        bpf_get_stack(ctx, f->ip, sizeof(f->ip), OWNER_STACK_SKIP);
    return 0;
}
"""


def run_frames() -> list[int]:
    """The kernel stack a program run by BPF_PROG_TEST_RUN on this CPU sees, as the
    programs take it (their own frame skipped): the same for every raw tracepoint program."""
    module = bcc.BPF(
        text=PROBE.encode(),
        cflags=[
            f"-DOWNER_STACK_DEPTH={OWNER_STACK_DEPTH}",
            f"-DOWNER_STACK_SKIP={OWNER_STACK_SKIP}",
        ],
    )
    try:
        fn = module.load_func(b"probe", bcc.BPF.RAW_TRACEPOINT)
        run_raw_tp(fn.fd, [0])
        frames = list(module[b"probe_frames"][module[b"probe_frames"].Key(0)].ip)
    finally:
        module.cleanup()
    return [ip for ip in frames if ip]


@pytest.mark.parametrize("helper_frames", [2, OWNER_STACK_DEPTH])
def test_owner_and_cgroup_paths_equal_the_reference(symbols, helper_frames: int) -> None:
    """The innermost frames' functions as helpers: with two, a call site at the first or
    the second frame is owned by the third; with all of them, by nobody (only helpers);
    a call site inside a helper but not on the stack is unresolved either way, and one in
    no helper owns itself."""

    frames = run_frames()
    assert len(frames) >= 4, [symbols.resolve(ip) for ip in frames]
    names = [symbols.resolve(ip) for ip in frames]
    extra = names[:helper_frames]
    helpers = sorted(helper_set(extra))
    ranges = symbols.ranges(helpers)
    home = cgroup_id(own_cgroup())
    layout = read_layout()
    backend = unattached_backend(
        live_capacity=64, site_capacity=16, symbolizer=symbols.resolve, owners=True, helpers=extra
    )
    try:
        events: list[Event] = []
        sites = [frames[0], frames[1], frames[0] + 1, frames[3]]
        for i, site in enumerate(sites * 3):
            events.append(
                PercpuAlloc(
                    site,
                    False,
                    False,
                    16,
                    8,
                    0,
                    0,
                    0x7000 + 8 * i,
                    16 * 2,
                    GFP_KERNEL,
                    stack=tuple(frames),
                    cgroup_id=home,
                )
            )
        events.append(PercpuFree(0, 0, 0x7000))
        agg = Aggregator(
            symbols.resolve,
            possible_cpus=backend.possible_cpus,
            live_capacity=64,
            site_capacity=16,
            helper_ranges=ranges,
        )
        for ev in events:
            agg.apply(ev)
            name = "percpu_alloc_percpu" if isinstance(ev, PercpuAlloc) else "percpu_free_percpu"
            args = [int(getattr(ev, f)) for f in layout.fields[name]]
            assert run_raw_tp(backend.program_fds[PROGRAMS[name]], args) == 0
        tables = backend.read_tables()
        assert tables == agg.tables
        owners = {k[0]: symbols.resolve(k[1]) if k[1] else "" for k in tables.sites}
        assert tables.owner_unresolved["site_not_on_stack"] == 3
        if helper_frames == 2:
            assert owners[frames[0]] == owners[frames[1]] == names[2]
            assert owners[frames[0] + 1] == owners[frames[3]] == ""
            assert tables.owner_unresolved["only_helpers"] == 0
        else:
            assert set(owners.values()) == {""}
            assert tables.owner_unresolved["only_helpers"] == 9
        assert {k[2] for k in tables.sites} == {home}
        snap = backend.snapshot()
        ctx = SnapshotContext(
            backend="bpf",
            kernel=snap.kernel,
            timestamp=snap.timestamp,
            nr_units=backend.possible_cpus,
            cgroup_labels=lambda ids: {i: own_cgroup() for i in ids},
            max_cgroups=10,
        )
        mine = agg.snapshot(ctx)
        assert snap.sites == mine.sites
        assert snap.cgroups == mine.cgroups == {own_cgroup(): mine.totals}
    finally:
        backend.close()
