"""The few bpf(2) commands bcc 0.26 does not expose, through ctypes.

- BPF_OBJ_GET_INFO_BY_FD for a program's run_cnt, run_time_ns and recursion_misses;
- BPF_MAP_CREATE of a per-CPU array: the deterministic real workload (N percpu
  allocations of round_up(value_size, 8) bytes from bpf_map_alloc_percpu).

Layouts follow include/uapi/linux/bpf.h; offsets were checked against the C header.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from pathlib import Path

BPF_MAP_CREATE = 0
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_TYPE_PERCPU_ARRAY = 6

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


def prog_info(prog_fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a program: id, name and the kernel's run counters."""
    info = _ProgInfo()
    attr = _InfoAttr(bpf_fd=prog_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")
    return ProgInfo(
        id=int(info.id),
        name=info.name.decode(errors="replace"),
        run_cnt=int(info.run_cnt),
        run_time_ns=int(info.run_time_ns),
        recursion_misses=int(info.recursion_misses),
    )


def create_percpu_array(value_size: int, max_entries: int, name: str = "") -> int:
    """A BPF_MAP_TYPE_PERCPU_ARRAY's fd: ``max_entries`` percpu allocations in this process."""
    attr = _MapCreateAttr(
        map_type=BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size=4,
        value_size=value_size,
        max_entries=max_entries,
        map_name=name.encode()[:15],
    )
    return _bpf(BPF_MAP_CREATE, attr, "BPF_MAP_CREATE")


def close(fd: int) -> None:
    """Close a map or program fd (the kernel frees a map's memory from a kworker later)."""
    os.close(fd)


def bpf_stats_enabled(sysctl: str | Path = "/proc/sys/kernel/bpf_stats_enabled") -> bool:
    """Does the kernel count run_cnt and run_time_ns (sysctl kernel.bpf_stats_enabled)?"""
    try:
        return Path(sysctl).read_text().strip() != "0"
    except OSError:
        return False
