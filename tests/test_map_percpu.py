"""What a BPF map holds of percpu memory: the model of pcpu_bpf/bpf/map_percpu.py against
the allocations the kernel makes for real maps of every modelled kind, seen in a
private tracefs instance (allocations of this process, every free)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from bpf_progs import attached_to_cgroup, load_storage_user
from test_footprint import held_sizes, percpu_trace
from waiting import wait_until

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.host_maps import count_entries
from pcpu_bpf.bpf.map_percpu import map_bytes_per_cpu
from pcpu_bpf.kernel.cgroups import unified_root
from pcpu_bpf.kernel.procfs import read_possible_cpus

NO_PREALLOC = syscalls.BPF_F_NO_PREALLOC
NO_COMMON_LRU = syscalls.BPF_F_NO_COMMON_LRU

# (type, key size, value size, max entries, flags, entries to insert)
CASES = {
    "percpu_array": (syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12, 3, 0, 0),
    "percpu_array_big": (syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 1000, 17, 0, 0),
    "percpu_hash": (syscalls.BPF_MAP_TYPE_PERCPU_HASH, 8, 20, 10, 0, 0),
    "percpu_hash_counter": (syscalls.BPF_MAP_TYPE_PERCPU_HASH, 8, 8, 1000, 0, 0),
    "percpu_hash_no_prealloc": (syscalls.BPF_MAP_TYPE_PERCPU_HASH, 8, 20, 100, NO_PREALLOC, 0),
    "percpu_hash_no_prealloc_filled": (
        syscalls.BPF_MAP_TYPE_PERCPU_HASH,
        8,
        20,
        100,
        NO_PREALLOC,
        40,
    ),
    "lru_percpu_hash": (syscalls.BPF_MAP_TYPE_LRU_PERCPU_HASH, 8, 20, 10, 0, 0),
    "lru_percpu_hash_own_lists": (
        syscalls.BPF_MAP_TYPE_LRU_PERCPU_HASH,
        8,
        20,
        10,
        NO_COMMON_LRU,
        0,
    ),
    "lru_hash": (syscalls.BPF_MAP_TYPE_LRU_HASH, 8, 20, 10, 0, 0),
    "hash": (syscalls.BPF_MAP_TYPE_HASH, 8, 20, 10, 0, 0),
    "hash_counter": (syscalls.BPF_MAP_TYPE_HASH, 8, 8, 1000, 0, 0),
    "hash_no_prealloc": (syscalls.BPF_MAP_TYPE_HASH, 8, 20, 1000, NO_PREALLOC, 5),
    "stack_trace": (syscalls.BPF_MAP_TYPE_STACK_TRACE, 4, 64, 16, 0, 0),
    "lpm_trie": (syscalls.BPF_MAP_TYPE_LPM_TRIE, 8, 8, 16, NO_PREALLOC, 0),
    "array": (syscalls.BPF_MAP_TYPE_ARRAY, 4, 8, 4, 0, 0),
}

pytestmark = pytest.mark.privileged


def _value(info: syscalls.MapInfo, cpus: int) -> bytes:
    per_cpu = info.type in (
        syscalls.BPF_MAP_TYPE_PERCPU_HASH,
        syscalls.BPF_MAP_TYPE_LRU_PERCPU_HASH,
    )
    size = (info.value_size + 7) // 8 * 8 * cpus if per_cpu else info.value_size
    return bytes(size)


def _model(fd: int) -> int:
    info = syscalls.map_info(fd)
    cpus = read_possible_cpus()
    entries = count_entries(fd, info, cpus)
    n = map_bytes_per_cpu(
        info, online_cpus=os.cpu_count() or 1, possible_cpus=cpus, entries=entries
    )
    assert n is not None
    return n


def _held_matches(inst: Path, want: int) -> bool:
    return sum(held_sizes((inst / "trace").read_text()).values()) == want


@pytest.mark.parametrize("case", list(CASES))
def test_the_model_equals_what_the_kernel_allocates(case: str) -> None:
    map_type, key_size, value_size, max_entries, flags, inserts = CASES[case]
    with percpu_trace(os.getpid()) as inst:
        fd = syscalls.create_map(map_type, key_size, value_size, max_entries, case, flags)
        try:
            info = syscalls.map_info(fd)
            for i in range(inserts):
                syscalls.update_elem(fd, struct.pack("<Q", i), _value(info, read_possible_cpus()))
            want = _model(fd)
            # bpf_mem_alloc refills its caches from irq_work: wait for them to settle.
            wait_until(
                lambda: _held_matches(inst, want),
                what=lambda: (
                    f"{case}: the kernel's allocations to sum to {want} bytes per CPU: "
                    f"{held_sizes((inst / 'trace').read_text())}"
                ),
            )
        finally:
            os.close(fd)


@contextmanager
def cgroups(n: int) -> Iterator[list[Path]]:
    root = unified_root()
    assert root is not None, "no cgroup v2 mounted"
    made = [root / f"pcpu-bpf-test-{os.getpid()}-storage-{i}" for i in range(n)]
    for path in made:
        path.mkdir()
    try:
        yield made
    finally:
        for path in made:
            path.rmdir()


def test_percpu_cgroup_storage_is_one_value_per_attached_cgroup() -> None:
    storage = syscalls.create_map(
        syscalls.BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE, 16, 20, 0, "pcpu_test_stor"
    )
    prog = load_storage_user("pcpu_test_stor", storage)
    try:
        with cgroups(3) as made, percpu_trace(os.getpid()) as inst, ExitStack() as stack:
            for path in made:
                stack.enter_context(attached_to_cgroup(prog, path))
            want = _model(storage)
            assert want == 3 * 20  # 20 bytes as they are: the allocator's unit is 4
            wait_until(
                lambda: _held_matches(inst, want),
                what=lambda: (
                    f"three storages of 20 bytes: {held_sizes((inst / 'trace').read_text())}"
                ),
            )
    finally:
        os.close(prog)
        os.close(storage)
