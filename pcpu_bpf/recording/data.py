"""A recording as data: its header, and the percpu events with who, where and when."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from pcpu_bpf.model.events import (
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)

FORMAT_JSONL = "jsonl"
FORMAT_TRACEFS = "tracefs"

# Keys of the header's geometry: struct pcpu_alloc_info's sizes and the CPUs.
GEOMETRY_KEYS: dict[str, type] = {
    "nr_possible_cpus": int,
    "nr_units": int,
    "unit_size": int,
    "static_size": int,
    "reserved_size": int,
    "dyn_size": int,
    "atom_size": int,
    "alloc_size": int,
    "memcg_kmem": bool,
}


class EventFields(Protocol):
    """One line's fields of an event, by tracepoint field name, read as its format spells
    them; a missing or bad required field is a RecordingError naming the line."""

    def address(self, key: str) -> int: ...

    def integer(self, key: str) -> int: ...

    def flag(self, key: str) -> bool: ...

    def call_site(self) -> int | None: ...

    def bytes_alloc(self) -> int | None: ...

    def gfp_flags(self) -> int | None: ...


def _alloc(f: EventFields) -> Event:
    return PercpuAlloc(
        call_site=f.call_site(),
        reserved=f.flag("reserved"),
        is_atomic=f.flag("is_atomic"),
        size=f.integer("size"),
        align=f.integer("align"),
        base_addr=f.address("base_addr"),
        off=f.integer("off"),
        ptr=f.address("ptr"),
        bytes_alloc=f.bytes_alloc(),
        gfp_flags=f.gfp_flags(),
    )


# Each tracepoint's event from a line's fields: what both readers (JSON Lines, tracefs
# text) build their events with.
EVENT_BUILDERS: dict[str, Callable[[EventFields], Event]] = {
    "percpu_alloc_percpu": _alloc,
    "percpu_free_percpu": lambda f: PercpuFree(
        f.address("base_addr"), f.integer("off"), f.address("ptr")
    ),
    "percpu_alloc_percpu_fail": lambda f: PercpuAllocFail(
        f.flag("reserved"), f.flag("is_atomic"), f.integer("size"), f.integer("align")
    ),
    "percpu_create_chunk": lambda f: PercpuCreateChunk(f.address("base_addr")),
    "percpu_destroy_chunk": lambda f: PercpuDestroyChunk(f.address("base_addr")),
}


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One percpu event and what the recorder knew about it."""

    line: int  # 1-based line of the file
    event: Event
    cpu: int | None = None
    timestamp: float | None = None  # seconds on the recorder's clock
    pid: int | None = None
    tgid: int | None = None
    comm: str | None = None
    cgroup: int | None = None  # cgroup v2 id
    # The call site as text: the symbol a tracefs trace prints (``func+0x59/0x130``),
    # or the hex address. The event's call_site holds the number when there is one.
    call_site_text: str | None = None
    # A free's size in bytes, where the recorder saw it (pcpu_free_area() returns it);
    # the free tracepoint has no size field.
    size: int | None = None


@dataclass(frozen=True, slots=True)
class RecordingHeader:
    """What a JSON Lines recording says about the machine before its first event."""

    version: int
    kernel: str | None = None
    started: str | None = None  # ISO 8601 wall-clock time
    clock: str | None = None
    geometry: Mapping[str, int | bool] | None = None  # GEOMETRY_KEYS
    percpu_stats: str | None = None  # the debugfs text at the start


@dataclass(frozen=True, slots=True)
class Recording:
    """A parsed recording or tracefs trace."""

    format: str  # FORMAT_JSONL or FORMAT_TRACEFS
    events: tuple[RecordedEvent, ...]
    header: RecordingHeader | None = None
    # Events the recorder could not keep (a full buffer) between the first and the last
    # event: the file says how many. The replay cannot be exact after a loss.
    lost: int = 0
    # The oldest events a wrapped ring buffer overwrote: before the first event kept.
    overwritten: int = 0
    # Pointers printed hashed (%p with hash-ptr): chunks and allocations are still told
    # apart, but addresses mean nothing.
    hashed_pointers: bool = False
    # Lines that were percpu events of no kind this reader knows, or other events.
    skipped_lines: int = 0
    # Events read but left out: before the point from which nothing was lost.
    left_out: int = 0
    end: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
