"""The bpf(2) commands the profiler needs, through ctypes: no bcc in the reading process.

Maps are read with MAP_LOOKUP_ELEM and MAP_LOOKUP_BATCH (GET_NEXT_KEY where batches are
missing), objects are pinned and opened in bpffs with OBJ_PIN and OBJ_GET, and
OBJ_GET_INFO_BY_FD describes maps, programs and links. Every map and program on the host
is listed with MAP_GET_NEXT_ID and PROG_GET_NEXT_ID and opened with *_GET_FD_BY_ID (both
need CAP_SYS_ADMIN). The loader also creates its small
arrays, writes them and attaches programs (RAW_TRACEPOINT_OPEN) through here.

Layouts follow include/uapi/linux/bpf.h; offsets were checked against the C header.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_MAP_LOOKUP_BATCH = 24

# enum bpf_map_type, in order (include/uapi/linux/bpf.h).
MAP_TYPE_NAMES: dict[int, str] = dict(
    enumerate(
        (
            "unspec",
            "hash",
            "array",
            "prog_array",
            "perf_event_array",
            "percpu_hash",
            "percpu_array",
            "stack_trace",
            "cgroup_array",
            "lru_hash",
            "lru_percpu_hash",
            "lpm_trie",
            "array_of_maps",
            "hash_of_maps",
            "devmap",
            "sockmap",
            "cpumap",
            "xskmap",
            "sockhash",
            "cgroup_storage",
            "reuseport_sockarray",
            "percpu_cgroup_storage",
            "queue",
            "stack",
            "sk_storage",
            "devmap_hash",
            "struct_ops",
            "ringbuf",
            "inode_storage",
            "task_storage",
            "bloom_filter",
            "user_ringbuf",
            "cgrp_storage",
            "arena",
        )
    )
)
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_CGROUP_STORAGE = 19
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21

BPF_F_NO_PREALLOC = 1 << 0  # map_flags: hash maps allocate elements as they are added
BPF_F_NO_COMMON_LRU = 1 << 1  # map_flags: one LRU list per CPU

BPF_ANY = 0
BPF_F_RDONLY = 1 << 3  # file_flags of OBJ_GET

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("inner_map_fd", _u32),
        ("numa_node", _u32),
        ("map_name", ctypes.c_char * 16),
    ]


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", _u32), ("_pad", _u32), ("key", _u64), ("value", _u64), ("flags", _u64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", _u64),
        ("out_batch", _u64),
        ("keys", _u64),
        ("values", _u64),
        ("count", _u32),
        ("map_fd", _u32),
        ("elem_flags", _u64),
        ("flags", _u64),
    ]


class _IdAttr(ctypes.Structure):
    """The GET_NEXT_ID and GET_FD_BY_ID member: start_id (or the id), next_id, open_flags."""

    _fields_ = [("id", _u32), ("next_id", _u32), ("open_flags", _u32)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", _u64), ("bpf_fd", _u32), ("file_flags", _u32)]


class _RawTpAttr(ctypes.Structure):
    _fields_ = [("name", _u64), ("prog_fd", _u32), ("_pad", _u32)]


class _MapInfo(ctypes.Structure):
    """struct bpf_map_info up to map_extra (88 bytes)."""

    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * 16),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("btf_vmlinux_id", _u32),
        ("map_extra", _u64),
    ]


class _LinkInfo(ctypes.Structure):
    """struct bpf_link_info: type, id, prog_id, then the raw_tracepoint member."""

    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("prog_id", _u32),
        ("_pad", _u32),
        ("tp_name", _u64),
        ("tp_name_len", _u32),
        ("_pad2", _u32),
        ("_rest", _u64 * 8),
    ]


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to attach_btf_id (232 bytes, 8-aligned)."""

    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * 16),
        ("ifindex", _u32),
        ("gpl_compatible", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32),
        ("nr_jited_func_lens", _u32),
        ("jited_ksyms", _u64),
        ("jited_func_lens", _u64),
        ("btf_id", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("nr_func_info", _u32),
        ("nr_line_info", _u32),
        ("line_info", _u64),
        ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32),
        ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32),
        ("prog_tags", _u64),
        ("run_time_ns", _u64),
        ("run_cnt", _u64),
        ("recursion_misses", _u64),
        ("verified_insns", _u32),
        ("attach_btf_obj_id", _u32),
        ("attach_btf_id", _u32),
        ("_pad", _u32),
    ]


@dataclass(frozen=True, slots=True)
class ProgInfo:
    """What the kernel counts for one loaded program (run_* only with bpf_stats on)."""

    id: int
    name: str
    run_cnt: int
    run_time_ns: int
    recursion_misses: int
    load_time_ns: int = 0  # boot-time ns (CLOCK_BOOTTIME) the program was loaded


@dataclass(frozen=True, slots=True)
class MapInfo:
    """A map's type, sizes and name, as the kernel reports them."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, f"type {self.type}")


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A link's id and the program it holds attached."""

    id: int
    type: int
    prog_id: int


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf(2) syscall number unknown for {platform.machine()}")
    ret = _libc.syscall(
        ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({what}): {os.strerror(err)}")
    return int(ret)


def _info(fd: int, info: ctypes.Structure) -> None:
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")


def prog_info(prog_fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a program: id, name and the kernel's run counters."""
    info = _ProgInfo()
    _info(prog_fd, info)
    return ProgInfo(
        id=int(info.id),
        name=info.name.decode(errors="replace"),
        run_cnt=int(info.run_cnt),
        run_time_ns=int(info.run_time_ns),
        recursion_misses=int(info.recursion_misses),
        load_time_ns=int(info.load_time),
    )


def map_info(map_fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a map: type, key and value size, entries, name."""
    info = _MapInfo()
    _info(map_fd, info)
    return MapInfo(
        id=int(info.id),
        type=int(info.type),
        key_size=int(info.key_size),
        value_size=int(info.value_size),
        max_entries=int(info.max_entries),
        flags=int(info.map_flags),
        name=info.name.decode(errors="replace"),
    )


def link_info(link_fd: int) -> LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a link: its id and its program's id."""
    info = _LinkInfo()
    _info(link_fd, info)
    return LinkInfo(id=int(info.id), type=int(info.type), prog_id=int(info.prog_id))


def prog_maps(prog_fd: int) -> tuple[str, tuple[int, ...]]:
    """A program's name and the ids of the maps it uses (BPF_OBJ_GET_INFO_BY_FD, then
    again with a map_ids buffer when it uses any)."""
    info = _ProgInfo()
    _info(prog_fd, info)
    name = info.name.decode(errors="replace")
    count = int(info.nr_map_ids)
    if count == 0:
        return name, ()
    ids = (_u32 * count)()
    info = _ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
    _info(prog_fd, info)
    return name, tuple(ids[: min(count, int(info.nr_map_ids))])


def _next_id(cmd: int, start: int, what: str) -> int | None:
    attr = _IdAttr(id=start)
    try:
        _bpf(cmd, attr, what)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return int(attr.next_id)


def _ids(cmd: int, what: str) -> Iterator[int]:
    current = 0
    while (found := _next_id(cmd, current, what)) is not None:
        yield found
        current = found


def map_ids() -> Iterator[int]:
    """The id of every map on the host, in increasing order (BPF_MAP_GET_NEXT_ID)."""
    return _ids(BPF_MAP_GET_NEXT_ID, "BPF_MAP_GET_NEXT_ID")


def prog_ids() -> Iterator[int]:
    """The id of every program on the host, in increasing order (BPF_PROG_GET_NEXT_ID)."""
    return _ids(BPF_PROG_GET_NEXT_ID, "BPF_PROG_GET_NEXT_ID")


def map_fd_by_id(map_id: int) -> int:
    """A read-only fd of map ``map_id`` (BPF_MAP_GET_FD_BY_ID); ENOENT once it is gone."""
    return _bpf(
        BPF_MAP_GET_FD_BY_ID, _IdAttr(id=map_id, open_flags=BPF_F_RDONLY), "BPF_MAP_GET_FD_BY_ID"
    )


def prog_fd_by_id(prog_id: int) -> int:
    """An fd of program ``prog_id`` (BPF_PROG_GET_FD_BY_ID); ENOENT once it is gone."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id), "BPF_PROG_GET_FD_BY_ID")


def create_map(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    name: str = "",
    flags: int = 0,
    inner_map_fd: int = 0,
) -> int:
    """A new map's fd (BPF_MAP_CREATE)."""
    attr = _MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        inner_map_fd=inner_map_fd,
        map_name=name.encode()[:15],
    )
    return _bpf(BPF_MAP_CREATE, attr, "BPF_MAP_CREATE")


def create_percpu_array(value_size: int, max_entries: int, name: str = "") -> int:
    """A BPF_MAP_TYPE_PERCPU_ARRAY's fd: ``max_entries`` percpu allocations in this process."""
    return create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, value_size, max_entries, name)


def update_elem(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """Write one element (BPF_MAP_UPDATE_ELEM)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = _ElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v), flags=flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr, "BPF_MAP_UPDATE_ELEM")


def lookup_elem(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """One element's value bytes, None when the key is absent (per-CPU maps: every CPU's)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = _ElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, attr, "BPF_MAP_LOOKUP_ELEM")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def next_key(map_fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first for None); None past the last (BPF_MAP_GET_NEXT_KEY)."""
    out = ctypes.create_string_buffer(key_size)
    k = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    attr = _ElemAttr(
        map_fd=map_fd, key=ctypes.addressof(k) if k is not None else 0, value=ctypes.addressof(out)
    )
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, attr, "BPF_MAP_GET_NEXT_KEY")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return out.raw


def lookup_batch(
    map_fd: int, key_size: int, value_size: int, max_entries: int
) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a map, batch by batch (BPF_MAP_LOOKUP_BATCH, Linux 5.6+).

    ``value_size`` is the whole value the kernel copies out (per-CPU maps: every CPU's).
    OSError(EINVAL or ENOTSUPP) where the kernel or the map type has no batch lookup.
    """
    out: list[tuple[bytes, bytes]] = []
    for kr, vr, n in _batches(map_fd, key_size, value_size, max_entries, 4096):
        out += [
            (kr[i * key_size : (i + 1) * key_size], vr[i * value_size : (i + 1) * value_size])
            for i in range(n)
        ]
    return out


def lookup_batch_values(
    map_fd: int, key_size: int, value_size: int, max_entries: int, batch: int = 4096
) -> Iterator[bytes]:
    """The values of a map, one bytes object per batch of up to ``batch`` entries: for
    walking a large table without a Python object per entry. OSError as `lookup_batch`."""
    for _, values, _ in _batches(map_fd, key_size, value_size, max_entries, batch):
        yield values


def lookup_batch_items(
    map_fd: int, key_size: int, value_size: int, max_entries: int, batch: int = 4096
) -> Iterator[tuple[bytes, bytes, int]]:
    """(keys, values, count) of each batch, as `lookup_batch_values` with the keys."""
    yield from _batches(map_fd, key_size, value_size, max_entries, batch)


def _batches(
    map_fd: int, key_size: int, value_size: int, max_entries: int, batch: int
) -> Iterator[tuple[bytes, bytes, int]]:
    """(keys, values, count) of each BPF_MAP_LOOKUP_BATCH call until the map is done."""
    count = max(1, min(max_entries, batch))
    keys = ctypes.create_string_buffer(key_size * count)
    values = ctypes.create_string_buffer(value_size * count)
    batch_in = ctypes.create_string_buffer(max(key_size, 8))
    batch_out = ctypes.create_string_buffer(max(key_size, 8))
    first = True
    while True:
        attr = _BatchAttr(
            in_batch=0 if first else ctypes.addressof(batch_in),
            out_batch=ctypes.addressof(batch_out),
            keys=ctypes.addressof(keys),
            values=ctypes.addressof(values),
            count=count,
            map_fd=map_fd,
        )
        done = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr, "BPF_MAP_LOOKUP_BATCH")
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            done = True  # the last batch; attr.count says how many it holds
        n = int(attr.count)
        if n:
            yield ctypes.string_at(keys, n * key_size), ctypes.string_at(values, n * value_size), n
        if done or n == 0:
            return
        ctypes.memmove(batch_in, batch_out, ctypes.sizeof(batch_out))
        first = False


def obj_pin(fd: int, path: str | Path) -> None:
    """Pin a map, program or link in bpffs at ``path`` (BPF_OBJ_PIN)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=ctypes.addressof(name), bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr, f"BPF_OBJ_PIN {path}")


def obj_get(path: str | Path, flags: int = 0) -> int:
    """An fd of the object pinned at ``path`` (BPF_OBJ_GET)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=ctypes.addressof(name), file_flags=flags)
    return _bpf(BPF_OBJ_GET, attr, f"BPF_OBJ_GET {path}")


def raw_tracepoint_open(prog_fd: int, tracepoint: str) -> int:
    """Attach a raw tracepoint program; the returned link fd keeps it attached."""
    name = ctypes.create_string_buffer(tracepoint.encode())
    attr = _RawTpAttr(name=ctypes.addressof(name), prog_fd=prog_fd)
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr, f"BPF_RAW_TRACEPOINT_OPEN {tracepoint}")


def close(fd: int) -> None:
    """Close a map or program fd (the kernel frees a map's memory from a kworker later)."""
    os.close(fd)


def bpf_stats_enabled(sysctl: str | Path = "/proc/sys/kernel/bpf_stats_enabled") -> bool:
    """Does the kernel count run_cnt and run_time_ns (sysctl kernel.bpf_stats_enabled)?"""
    try:
        return Path(sysctl).read_text(errors="replace").strip() != "0"
    except OSError:
        return False
