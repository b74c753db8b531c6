"""The profiler's own percpu memory: computed from its definitions, equal to what a real
load allocates, and within the aim of 4 KiB per possible CPU."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from waiting import wait_until

from pcpu_bpf.bpf.loader import LoadRequest, default_bpf_dir, load, program_defines
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.kernel.procfs import read_possible_cpus
from pcpu_bpf.model.layout import DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY
from pcpu_bpf.model.owners import helper_set

pytestmark = pytest.mark.privileged

TRACEFS = Path("/sys/kernel/tracing")
AIM_PER_CPU = 4096
ALLOC = re.compile(r"percpu_alloc_percpu: .*? size=(\d+) .*? ptr=(\w+)")
FREE = re.compile(r"percpu_free_percpu: .*? ptr=(\w+)")


@contextmanager
def percpu_trace(pid: int | None) -> Iterator[Path]:
    """A private tracefs instance: allocations made by ``pid`` (None: by anyone), every free."""
    inst = TRACEFS / "instances" / f"pcpu_bpf_footprint_{os.getpid()}_{pid or 'all'}"
    inst.mkdir()
    try:
        (inst / "options/hash-ptr").write_text("0")
        (inst / "buffer_size_kb").write_text("4096")
        alloc = inst / "events/percpu/percpu_alloc_percpu"
        if pid is not None:
            (alloc / "filter").write_text(f"common_pid == {pid}")
        (alloc / "enable").write_text("1")
        (inst / "events/percpu/percpu_free_percpu/enable").write_text("1")
        yield inst
    finally:
        (inst / "events/percpu/enable").write_text("0")
        inst.rmdir()


def held_sizes(trace: str) -> dict[str, int]:
    """ptr -> size of each allocation in ``trace`` not freed later in it."""
    held: dict[str, int] = {}
    for line in trace.splitlines():
        if m := ALLOC.search(line):
            held[m[2]] = int(m[1])
        elif m := FREE.search(line):
            held.pop(m[1], None)
    return held


def defaults(owners: bool = False) -> dict[str, int]:
    return program_defines(
        read_layout(),
        live_capacity=DEFAULT_LIVE_CAPACITY,
        site_capacity=DEFAULT_SITE_CAPACITY,
        nr_possible_cpus=read_possible_cpus(),
        owners=owners,
    )


@pytest.mark.parametrize("owners", [False, True], ids=["owners-off", "owners-on"])
def test_computed_percpu_bytes_equal_what_a_load_allocates(owners: bool) -> None:
    """What the loader computes is what the kernel allocates: with owners on too, whose
    stack walk must not push a program into a private stack (percpu memory)."""
    helpers = tuple(sorted(helper_set())) if owners else ()
    request = LoadRequest(str(default_bpf_dir()), defaults(owners), attach=False, helpers=helpers)
    with percpu_trace(os.getpid()) as inst:
        manifest, fds, module = load(request)
        try:
            computed = manifest["percpu_bytes_per_cpu"]
            # bcc loads probe programs of its own and closes them; the kernel frees
            # those later, from RCU: wait for it rather than count them.
            held = wait_until(
                lambda: (
                    h
                    if sum((h := held_sizes((inst / "trace").read_text())).values()) == computed
                    else None
                ),
                what=lambda: (
                    f"the load's percpu allocations to sum to {computed} bytes per CPU: "
                    f"{held_sizes((inst / 'trace').read_text())}"
                ),
            )
        finally:
            module.cleanup()  # bcc's own maps and programs
            os.close(fds[manifest["maps"]["pcpu_meta"]])
    assert 0 < computed <= AIM_PER_CPU
    assert len(held) < 40, held  # a few dozen objects, not thousands


def test_a_daemon_set_spends_little_of_percpu_stats() -> None:
    """percpu_stats before and after a load: a handful of allocations, not 4,160."""
    from pcpu_bpf.backends.bpf import BpfBackend

    before = read_percpu_stats().globals.nr_cur_alloc
    with BpfBackend(kernel_stats=lambda: None) as backend:
        after = read_percpu_stats().globals.nr_cur_alloc
        snap = backend.snapshot()
    assert snap.profiler_percpu_bytes is not None
    assert snap.profiler_percpu_bytes <= AIM_PER_CPU * read_possible_cpus()
    # Other processes allocate too: the bound is loose, the old design added 4,160.
    assert after - before < 200, (before, after)
