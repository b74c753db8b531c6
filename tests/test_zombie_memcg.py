"""The zombie memory cgroup for real: a memory cgroup that charged page cache and was
removed stays, dying, with its percpu statistics live; the profiler counts it dying and
keeps every one of those allocations live at its memory-cgroup call site.

The cgroup is made by this process, under a private tracefs instance that records its
allocations: the pointers are known exactly, whatever else the host does meanwhile.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_footprint import percpu_trace

from pcpu_bpf.backends.bpf import BpfBackend
from pcpu_bpf.backends.host_stats import cgroup_stats
from pcpu_bpf.kernel import cgroups

pytestmark = pytest.mark.privileged

ALLOC = re.compile(r"percpu_alloc_percpu: call_site=([\w.]+)\+\S+ .*? ptr=(\w+)")
FREE = re.compile(r"percpu_free_percpu: .*? ptr=(\w+)")


def memory_hierarchy() -> tuple[Path, str]:
    """Where memory cgroups are made here, and the hierarchy's label for dying ones."""
    v1 = cgroups.v1_root("memory")
    if v1 is not None:
        return v1, "memory"
    v2 = cgroups.unified_root()
    if v2 is not None and "memory" in (v2 / "cgroup.subtree_control").read_text().split():
        return v2, cgroups.UNIFIED
    pytest.fail("no memory cgroups here: neither v1 memory nor v2 with +memory at the root")


def held(trace: str) -> dict[int, str]:
    """Pointer -> call site function of the allocations in ``trace`` not freed in it."""
    out: dict[int, str] = {}
    for line in trace.splitlines():
        if m := ALLOC.search(line):
            out[int(m[2], 16)] = m[1]
        elif m := FREE.search(line):
            out.pop(int(m[1], 16), None)
    return out


@contextmanager
def page_cache_file(path: Path) -> Iterator[Path]:
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # frees the page cache: the cgroup can go, later


def test_a_removed_memory_cgroup_stays_dying_with_its_percpu_live(tmp_path: Path) -> None:
    root, hierarchy = memory_hierarchy()
    made = root / f"pcpu-bpf-test-{os.getpid()}-zombie"
    with (
        BpfBackend(kernel_stats=lambda: None) as backend,
        page_cache_file(Path("/var/tmp") / f"pcpu-bpf-test-{os.getpid()}-cache") as cache,
        percpu_trace(os.getpid()) as inst,
    ):
        made.mkdir()
        try:
            # A child in the cgroup writes 8 MiB: page cache charged to it.
            subprocess.run(
                [
                    "sh",
                    "-c",
                    f'echo $$ > "{made}/cgroup.procs" && '
                    f'exec dd if=/dev/zero of="{cache}" bs=1M count=8 status=none',
                ],
                check=True,
            )
        finally:
            made.rmdir()
        left = held((inst / "trace").read_text())
        memcg = {ptr: site for ptr, site in left.items() if site == "mem_cgroup_css_alloc"}
        assert len(memcg) == 2, left  # the memcg's vmstats and its per-node lruvec stats
        # Each allocation the dying cgroup still holds is live in the profiler's table,
        # at the call site the kernel named.
        sites = {ptr: backend.live_site(ptr) for ptr in left}
        assert {ptr: key.call_site if key else None for ptr, key in sites.items()} == left
        stats = cgroup_stats(
            20, unified=cgroups.unified_root(), memory_v1=cgroups.v1_root("memory")
        )
        assert stats.dying[hierarchy] >= 1
        live = backend.snapshot().by_call_site["mem_cgroup_css_alloc"]
        assert live.live_allocations >= 2
