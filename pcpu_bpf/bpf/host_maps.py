"""Every BPF map on the host and the percpu memory it holds, by name, type and program.

The maps are listed with BPF_MAP_GET_NEXT_ID and opened read-only by id, the programs
with BPF_PROG_GET_NEXT_ID, whose map ids say which programs use which map. Each map's
percpu bytes come from `pcpu_bpf.bpf.map_percpu`; the few types whose figure depends on
the entries they hold now (per-CPU hashes without preallocation, per-CPU cgroup storages)
have their entries counted. Listing needs CAP_SYS_ADMIN (PermissionError without it).

Cost, per reading: four bpf(2) calls per map and five per program, tens of
microseconds each from Python (docs/benchmarks.md: 68 ms for 1,000 maps and 1,000
programs on a loaded 2-vCPU machine), so the daemon reads it with the kernel
statistics, at most once per --min-read-interval.
"""

from __future__ import annotations

import errno
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.map_percpu import PERCPU_VALUE_TYPES, counts_entries, map_bytes_per_cpu, round8

# Program names a map's label lists before it says how many more use it.
MAX_PROGRAM_NAMES = 3

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HostMap:
    """One map on the host: who it is, and the percpu bytes it holds on all possible CPUs."""

    id: int
    name: str
    type_name: str
    programs: tuple[str, ...]  # names of the programs using it, sorted, each once
    percpu_bytes: int

    @property
    def program_label(self) -> str:
        """The programs as one label value: up to three names, then how many more."""
        names = self.programs[:MAX_PROGRAM_NAMES]
        rest = len(self.programs) - len(names)
        return ",".join(names) + (f",+{rest} more" if rest else "")


def _with_fd(open_fd: Callable[[int], int], obj_id: int, use: Callable[[int], T]) -> T | None:
    """``use`` an fd of the object ``obj_id``; None when it went away meanwhile."""
    try:
        fd = open_fd(obj_id)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        return use(fd)
    finally:
        syscalls.close(fd)


def programs_by_map() -> dict[int, tuple[str, ...]]:
    """Map id -> the names of the programs that use it (sorted, each once)."""
    names: defaultdict[int, set[str]] = defaultdict(set)

    def record(fd: int) -> None:
        name, map_ids = syscalls.prog_maps(fd)
        for map_id in map_ids:
            names[map_id].add(name)

    for prog_id in syscalls.prog_ids():
        _with_fd(syscalls.prog_fd_by_id, prog_id, record)
    return {map_id: tuple(sorted(n)) for map_id, n in names.items()}


def count_entries(fd: int, info: syscalls.MapInfo, possible_cpus: int) -> int:
    """Entries in the map now: batch lookups where the map has them, else key by key."""
    value_size = info.value_size
    if info.type in PERCPU_VALUE_TYPES:
        value_size = round8(info.value_size) * possible_cpus
    try:
        return len(syscalls.lookup_batch(fd, info.key_size, value_size, info.max_entries or 1))
    except OSError:
        pass  # no batch lookup for this type (cgroup storages) or this kernel
    n, key = 0, None
    while (key := syscalls.next_key(fd, key, info.key_size)) is not None:
        n += 1
    return n


def _describe(fd: int, possible_cpus: int, online_cpus: int) -> tuple[syscalls.MapInfo, int | None]:
    info = syscalls.map_info(fd)
    entries = count_entries(fd, info, possible_cpus) if counts_entries(info) else 0
    per_cpu = map_bytes_per_cpu(
        info, online_cpus=online_cpus, possible_cpus=possible_cpus, entries=entries
    )
    return info, per_cpu


def host_maps(possible_cpus: int, online_cpus: int) -> Iterator[HostMap]:
    """Every map on the host that holds percpu memory (types not modelled are left out)."""
    owners = programs_by_map()
    for map_id in syscalls.map_ids():
        described = _with_fd(
            syscalls.map_fd_by_id,
            map_id,
            lambda fd: _describe(fd, possible_cpus, online_cpus),
        )
        if described is None:
            continue
        info, per_cpu = described
        if not per_cpu:
            continue
        yield HostMap(
            id=info.id,
            name=info.name,
            type_name=info.type_name,
            programs=owners.get(info.id, ()),
            percpu_bytes=per_cpu * possible_cpus,
        )
