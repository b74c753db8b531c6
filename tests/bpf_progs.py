"""Tiny BPF programs loaded through raw bpf(2), so tests own maps that programs use (not a
test). Instruction encoding and attribute layouts from include/uapi/linux/bpf.h."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pcpu_bpf.bpf.syscalls import _bpf

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_CGROUP_INET_EGRESS = 1
BPF_PSEUDO_MAP_FD = 1
HELPER_GET_LOCAL_STORAGE = 81

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _LoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    ]


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", _u32),
        ("attach_bpf_fd", _u32),
        ("attach_type", _u32),
        ("attach_flags", _u32),
        ("replace_bpf_fd", _u32),
    ]


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def _load_map(dst: int, map_fd: int) -> bytes:
    # BPF_LD | BPF_DW | BPF_IMM, two instructions: the map, by fd, into a register.
    return _insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd) + _insn(0)


def _mov(dst: int, imm: int) -> bytes:
    return _insn(0xB7, dst, imm=imm)  # BPF_ALU64 | BPF_MOV | BPF_K


def _call(helper: int) -> bytes:
    return _insn(0x85, imm=helper)  # BPF_JMP | BPF_CALL


EXIT = _insn(0x95)


def _load(prog_type: int, code: bytes, name: str, attach_type: int = 0) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = _LoadAttr(
        prog_type=prog_type,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license),
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.addressof(log),
        prog_name=name.encode()[:15],
        expected_attach_type=attach_type,
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD")
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {log.value.decode(errors='replace')}") from None


def load_map_user(name: str, map_fds: Sequence[int]) -> int:
    """A socket filter that names each of ``map_fds`` (so the kernel lists it as a user of
    them) and returns 0; its fd."""
    code = b"".join(_load_map(1, fd) for fd in map_fds) + _mov(0, 0) + EXIT
    return _load(BPF_PROG_TYPE_SOCKET_FILTER, code, name)


def load_storage_user(name: str, storage_fd: int) -> int:
    """A cgroup_skb egress program that takes its cgroup storage and lets the packet
    through; its fd."""
    code = (
        _load_map(1, storage_fd) + _mov(2, 0) + _call(HELPER_GET_LOCAL_STORAGE) + _mov(0, 1) + EXIT
    )
    return _load(BPF_PROG_TYPE_CGROUP_SKB, code, name, BPF_CGROUP_INET_EGRESS)


@contextmanager
def attached_to_cgroup(prog_fd: int, cgroup: Path) -> Iterator[None]:
    """``prog_fd`` attached to the v2 cgroup directory at egress, detached afterwards."""
    dir_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    attr = _AttachAttr(target_fd=dir_fd, attach_bpf_fd=prog_fd, attach_type=BPF_CGROUP_INET_EGRESS)
    try:
        _bpf(BPF_PROG_ATTACH, attr, "BPF_PROG_ATTACH")
        try:
            yield
        finally:
            _bpf(BPF_PROG_DETACH, attr, "BPF_PROG_DETACH")
    finally:
        os.close(dir_fd)
