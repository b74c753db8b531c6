"""The zombie memory cgroup for real: memory cgroups that charged page cache and were
removed stay dying with their percpu statistics live; the profiler counts them dying
(pcpu_cgroup_dying_descendants), keeps each of those allocations live at its call site as
they age, and sees them freed once the page cache goes.

A private tracefs instance records every percpu event meanwhile: the kernel's own account,
which the profiler's counts are checked against. The host may make and remove cgroups of
its own at the same time (services, a shell that runs each command in a cgroup of its
own), so the dying count is compared only over an attempt during which no other cgroup
was removed (the directory listing) or freed (no other free at the cgroup call sites: a
cgroup's count drops in css_free_rwork_fn() between percpu_ref_exit() and
psi_cgroup_free()); an attempt that was not quiet is made again.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_footprint import percpu_trace
from waiting import wait_until

from pcpu_bpf.backends.bpf import BpfBackend
from pcpu_bpf.kernel import cgroups
from pcpu_bpf.model.snapshot import SiteKey, Snapshot

pytestmark = pytest.mark.privileged

ZOMBIES = 3
ATTEMPTS = 6
CACHE_MIB = 4
MIN_AGE = 2.0
# Seconds the dying cgroups may take to be freed once their page cache is gone: a bound
# on a hang (freeing goes through RCU and workqueues), not a claim about speed.
RELEASE_TIMEOUT = 120.0
# The call sites of a cgroup's own percpu statistics: the memory controller's
# (mem_cgroup_css_alloc, into which 6.18 inlines mem_cgroup_alloc and
# alloc_mem_cgroup_per_node_info; memcg1_alloc_events) and the cgroup's (css_rstat_init,
# psi_cgroup_alloc). percpu_ref_init and the percpu counters serve everyone.
CGROUP_SITE = re.compile(r"cgroup|memcg|rstat|psi")
# What one removed memory cgroup keeps there while it is dying, traced on 6.18: the
# memcg's statistics and its per-node ones, the v1 event counters, the rstat counters of
# the cgroup (base and rstat) and of its memory css, and the PSI groups. Its three
# percpu_refs go at removal.
DYING_KEEPS = {
    "mem_cgroup_css_alloc": 2,
    "memcg1_alloc_events": 1,
    "css_rstat_init": 3,
    "psi_cgroup_alloc": 1,
}
EVENT = re.compile(r"-(\d+)\s+\[\d+\].*? (percpu_alloc_percpu|percpu_free_percpu): (.*)")
FIELD = re.compile(r"(\w+)=(\S+)")
FREED = re.compile(r"percpu_free_percpu: .*? ptr=(\w+)")


def memory_hierarchy() -> tuple[Path, str]:
    """Where memory cgroups are made here, and the hierarchy's label for dying ones."""
    v1 = cgroups.v1_root("memory")
    if v1 is not None:
        return v1, "memory"
    v2 = cgroups.unified_root()
    if v2 is not None and "memory" in (v2 / "cgroup.subtree_control").read_text().split():
        return v2, cgroups.UNIFIED
    pytest.fail("no memory cgroups here: neither v1 memory nor v2 with +memory at the root")


@dataclass
class Traced:
    """The cgroup call sites' events of one trace: this process's allocations (and which
    of them were freed in it, which are still held), and others' allocations there."""

    allocated: Counter[str] = field(default_factory=Counter)
    freed: Counter[str] = field(default_factory=Counter)
    held: dict[int, str] = field(default_factory=dict)
    others: int = 0


def traced(text: str, pid: int) -> Traced:
    out = Traced()
    for line in text.splitlines():
        m = EVENT.search(line)
        if m is None:
            continue
        fields = dict(FIELD.findall(m[3]))
        ptr = int(fields["ptr"], 16)
        if m[2] == "percpu_free_percpu":
            if (site := out.held.pop(ptr, None)) is not None:
                out.freed[site] += 1
            continue
        site = fields["call_site"].split("+")[0]
        if not CGROUP_SITE.search(site):
            continue
        if int(m[1]) != pid:
            out.others += 1
            continue
        out.allocated[site] += 1
        out.held[ptr] = site
    return out


@dataclass(frozen=True)
class Counts:
    allocations: int = 0
    frees: int = 0
    live: int = 0


def cgroup_sites(snap: Snapshot) -> dict[str, Counts]:
    """The profiler's counts at the cgroup call sites."""
    return {
        name: Counts(r.allocations, r.frees, r.live_allocations)
        for name, r in snap.by_call_site.items()
        if CGROUP_SITE.search(name)
    }


def dying(snap: Snapshot, hierarchy: str) -> int:
    ks = snap.kernel_stats
    assert ks is not None and ks.cgroups is not None, ks
    return ks.cgroups.dying[hierarchy]


def other_cgroups(root: Path, ours: Path) -> set[tuple[str, int]]:
    """Every cgroup of the hierarchy but ours, by path and inode."""
    mine = "/" + ours.name
    return {
        (rel, ino)
        for rel, ino, _ in cgroups.walk(root)
        if rel != mine and not rel.startswith(mine + "/")
    }


def charge_page_cache(cgroup: Path, file: Path) -> None:
    """A process in ``cgroup`` writes ``file``: its page cache is charged to the cgroup."""
    subprocess.run(
        [
            "sh",
            "-c",
            'echo $$ > "$1/cgroup.procs" && exec dd if=/dev/zero of="$2" bs=1M count="$3" '
            "status=none",
            "sh",
            str(cgroup),
            str(file),
            str(CACHE_MIB),
        ],
        check=True,
    )


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


@contextmanager
def zombie_parent(root: Path, hierarchy: str, files: list[Path]) -> Iterator[Path]:
    """A cgroup to make the zombies in; at the end the files go, the caches are dropped
    (so the dying cgroups can be freed) and the cgroups are removed."""
    parent = root / f"pcpu-bpf-test-{os.getpid()}-zombies"
    parent.mkdir()
    try:
        if hierarchy == cgroups.UNIFIED:
            (parent / "cgroup.subtree_control").write_text("+memory")
        yield parent
    finally:
        for file in files:
            file.unlink(missing_ok=True)
        for child in parent.iterdir():
            if child.is_dir():
                child.rmdir()
        parent.rmdir()
        drop_caches()


@dataclass
class Attempt:
    before: Snapshot
    removed: Snapshot
    after: Snapshot
    trace: Traced
    removed_at: float


def make_zombies(
    backend: BpfBackend, root: Path, parent: Path, attempt: int, files: list[Path]
) -> tuple[Attempt, str | None]:
    """ZOMBIES memory cgroups made, charged and removed under one trace; why the attempt
    was not quiet, or None."""
    others = other_cgroups(root, parent)
    with percpu_trace(None) as inst:
        before = backend.snapshot()
        made = []
        for i in range(ZOMBIES):
            cgroup = parent / f"a{attempt}z{i}"
            cgroup.mkdir()
            made.append(cgroup)
            files.append(Path("/var/tmp") / f"{parent.name}-a{attempt}z{i}")
            charge_page_cache(cgroup, files[-1])
        for cgroup in made:
            cgroup.rmdir()
        removed_at = time.monotonic()
        removed = backend.snapshot()
        # Read after the dying count was: a cgroup freed before that read shows here.
        after = backend.snapshot()
        trace = traced((inst / "trace").read_text(), os.getpid())
    run = Attempt(before, removed, after, trace, removed_at)
    if other_cgroups(root, parent) != others:
        return run, "another cgroup was made or removed"
    if trace.others:
        return run, f"{trace.others} allocations at cgroup call sites by other processes"
    c0, c2 = cgroup_sites(before), cgroup_sites(after)
    for site in c0.keys() | c2.keys():
        frees = c2.get(site, Counts()).frees - c0.get(site, Counts()).frees
        if frees != trace.freed[site]:
            return run, f"{frees - trace.freed[site]} other frees at {site}"
    return run, None


def test_removed_memory_cgroups_stay_dying_with_their_percpu_live_until_freed() -> None:
    root, hierarchy = memory_hierarchy()
    files: list[Path] = []
    held: dict[int, str] = {}
    with (
        BpfBackend(min_age=MIN_AGE) as backend,
        zombie_parent(root, hierarchy, files) as parent,
    ):
        noisy: list[str] = []
        for attempt in range(ATTEMPTS):
            run, noise = make_zombies(backend, root, parent, attempt, files)
            held |= run.trace.held
            if noise is None:
                break
            noisy.append(noise)
        else:
            pytest.fail(f"the host removed or freed cgroups during every attempt: {noisy}")

        # Each removed cgroup is counted dying, exactly.
        assert dying(run.removed, hierarchy) - dying(run.before, hierarchy) == ZOMBIES
        # What the removed cgroups keep, as the kernel traced it ...
        keeps = dict(DYING_KEEPS)
        if hierarchy == cgroups.UNIFIED:
            del keeps["memcg1_alloc_events"]
        assert Counter(run.trace.held.values()) == {s: n * ZOMBIES for s, n in keeps.items()}
        # ... is what the profiler counted: every allocation, and live what is still held.
        c0, c2 = cgroup_sites(run.before), cgroup_sites(run.after)
        for site, allocated in run.trace.allocated.items():
            assert c2[site].allocations - c0.get(site, Counts()).allocations == allocated, site
            live = c2[site].live - c0.get(site, Counts()).live
            assert live == allocated - run.trace.freed[site], site
        for ptr, site in run.trace.held.items():
            key = backend.live_site(ptr)
            assert key is not None and key.call_site == site, (hex(ptr), site, key)

        # They age: in a snapshot begun MIN_AGE after the removal, every one is old.
        def aged_snapshot() -> Snapshot | None:
            begun = time.monotonic()
            snap = backend.snapshot()
            return snap if begun - run.removed_at > MIN_AGE else None

        aged = wait_until(aged_snapshot, what=f"a snapshot begun {MIN_AGE} s after the removal")
        assert aged.ages is not None
        for site, count in Counter(run.trace.held.values()).items():
            assert aged.ages.old_allocations[SiteKey(site)] >= count, site
            assert aged.ages.oldest_seconds[SiteKey(site)] > MIN_AGE, site
        assert all(backend.live_site(ptr) is not None for ptr in run.trace.held)

        # The page cache goes: the dying cgroups are freed, and with them their percpu.
        with percpu_trace(None) as inst:
            freeing = cgroup_sites(backend.snapshot())
            for file in files:
                file.unlink()
            drop_caches()  # the file system's metadata blocks the cgroups charged, too

            def all_freed() -> bool:
                text = (inst / "trace").read_text()
                if held.keys() <= {int(ptr, 16) for ptr in FREED.findall(text)}:
                    return True
                drop_caches()  # again: pages under writeback at the last drop stayed
                return False

            wait_until(
                all_freed,
                what=f"the {len(held)} percpu allocations of the dying cgroups freed",
                timeout=RELEASE_TIMEOUT,
                interval=1.0,
            )
            freed = cgroup_sites(backend.snapshot())
        for site, count in Counter(held.values()).items():
            assert freed[site].frees - freeing.get(site, Counts()).frees >= count, site
