"""Simulated percpu events written as a tracefs trace, and simulated traces (not a test)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from pcpu_bpf.model.events import (
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
)
from pcpu_bpf.recording.gfp import format_gfp
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.geometry import Geometry
from pcpu_bpf.sim.scenarios import Workload, get_scenario

HEADER = """\
# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


def fake_hash(value: int) -> int:
    """A stand-in for %p's siphash: 32 bits, the same for the same value."""
    return (value * 0x9E3779B97F4A7C15 >> 17) & 0xFFFFFFFF


def pointer(value: int, hashed: bool) -> str:
    return f"{fake_hash(value) if hashed else value:016x}"


def fields(e: Event, hashed: bool) -> str:
    """The event's field=value list as the 6.18 print formats give it."""
    if isinstance(e, PercpuAlloc):
        site = f"0x{e.call_site:x}" if e.call_site else "mm_init+0x2bf/0x4a0"
        return (
            f"call_site={site} reserved={int(e.reserved)} is_atomic={int(e.is_atomic)} "
            f"size={e.size} align={e.align} base_addr={pointer(e.base_addr, hashed)} "
            f"off={e.off} ptr={pointer(e.ptr, hashed)} bytes_alloc={e.bytes_alloc} "
            f"gfp_flags={format_gfp(e.gfp_flags or 0)}"
        )
    if isinstance(e, PercpuAllocFail):
        return (
            f"reserved={int(e.reserved)} is_atomic={int(e.is_atomic)} size={e.size} align={e.align}"
        )
    if isinstance(e, (PercpuCreateChunk, PercpuDestroyChunk)):
        return f"base_addr={pointer(e.base_addr, hashed)}"
    return f"base_addr={pointer(e.base_addr, hashed)} off={e.off} ptr={pointer(e.ptr, hashed)}"


NAMES = {
    "PercpuAlloc": "percpu_alloc_percpu",
    "PercpuFree": "percpu_free_percpu",
    "PercpuAllocFail": "percpu_alloc_percpu_fail",
    "PercpuCreateChunk": "percpu_create_chunk",
    "PercpuDestroyChunk": "percpu_destroy_chunk",
}


def trace_text(events: Iterable[Event], *, hashed: bool = False, header: bool = True) -> str:
    """The events as ``trace`` prints them (``header=False``: as ``trace_pipe``)."""
    lines = []
    for n, e in enumerate(events):
        ts = 1000 + n / 1e6
        task = "kworker/u8:3-231" if n % 7 == 0 else "bpftool-4242"
        lines.append(
            f"{task:>22} [{n % 2:03d}] ..... {ts:12.6f}: {NAMES[type(e).__name__]}: "
            f"{fields(e, hashed)}"
        )
    head = HEADER.format(n=len(lines)) if header else ""
    return head + "".join(line + "\n" for line in lines)


def simulated_trace(
    scenario: str, geometry: Geometry, *, seed: int, before: int, during: int
) -> list[Event]:
    """The events of ``during`` steps of a scenario, after ``before`` untraced ones."""
    events: list[Event] = []
    sc = get_scenario(scenario)
    a = Allocator(geometry, balance=sc.balance, sink=events.append)
    steps = sc.run(Workload(a, random.Random(seed)))
    for _ in range(before):
        next(steps)
    del events[:]
    for _ in range(during):
        next(steps)
    return events
