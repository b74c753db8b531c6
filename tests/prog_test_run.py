"""BPF_PROG_TEST_RUN of a raw tracepoint program on synthetic arguments (not a test).

How the tests drive the loaded programs without the kernel's events
(net/bpf/test_run.c, bpf_prog_test_run_raw_tp()); struct layout from
include/uapi/linux/bpf.h.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from pcpu_bpf.bpf.syscalls import _bpf

BPF_PROG_TEST_RUN = 10
BPF_F_TEST_RUN_ON_CPU = 1
MAX_RAW_TP_ARGS = 12  # MAX_BPF_FUNC_ARGS: the kernel refuses a longer ctx

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", _u32),
        ("retval", _u32),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("data_in", _u64),
        ("data_out", _u64),
        ("repeat", _u32),
        ("duration", _u32),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("ctx_in", _u64),
        ("ctx_out", _u64),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
        ("_pad", _u32),
    ]


def run_raw_tp(prog_fd: int, args: Sequence[int], cpu: int | None = None) -> int:
    """Run a raw tracepoint program once on ``args`` (u64s, TP_PROTO order); its return value.

    ``cpu`` runs it on that CPU (BPF_F_TEST_RUN_ON_CPU), so per-CPU maps see it there.
    """
    if not 0 < len(args) <= MAX_RAW_TP_ARGS:
        raise ValueError(f"a raw tracepoint takes 1..{MAX_RAW_TP_ARGS} arguments")
    ctx = (_u64 * len(args))(*(a & 0xFFFF_FFFF_FFFF_FFFF for a in args))
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        ctx_size_in=ctypes.sizeof(ctx),
        ctx_in=ctypes.addressof(ctx),
        flags=BPF_F_TEST_RUN_ON_CPU if cpu is not None else 0,
        cpu=cpu or 0,
    )
    _bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    return int(attr.retval)


def unattached_backend(**options: Any) -> Any:
    """A live-kernel backend loaded but not attached, for BPF_PROG_TEST_RUN: no kernel
    statistics read (the programs' own tables are compared), ``options`` as BpfBackend
    takes them (capacities, tracefs fixture, symbolizer, owners)."""
    from pcpu_bpf.backends.bpf import BpfBackend

    return BpfBackend(kernel_stats=lambda: None, attach=False, **options)
