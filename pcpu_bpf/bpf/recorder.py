"""The live side of `pcpu-bpf record`: record.bpf.c loaded, its ring buffer drained.

The loader process compiles and attaches the recorder (never pinned: the programs detach
when the recorder closes its fds or exits). Each ring buffer record is one
struct recorded_event (RECORD_EVENT_FORMAT), decoded here into the model's event and
what the recorder knew around it: CPU, boot-clock time, task, cgroup. Events that found
the ring full are counted per CPU in pcpu_rec_lost; `lost()` reads the counts.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.handoff import spawn_loader
from pcpu_bpf.bpf.loader import (
    LoadRequest,
    compile_env_check,
    default_bpf_dir,
    recorder_defines,
)
from pcpu_bpf.bpf.ringbuf import RingBuffer
from pcpu_bpf.bpf.tracefs import RECORDER_FIELDS, read_layout
from pcpu_bpf.errors import BackendUnavailable
from pcpu_bpf.model.events import (
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.model.layout import (
    DEFAULT_RING_BYTES,
    RECORD_ATOMIC,
    RECORD_EVENT_FORMAT,
    RECORD_HAS_BYTES_ALLOC,
    RECORD_HAS_CALL_SITE,
    RECORD_HAS_GFP,
    RECORD_KINDS,
    RECORD_RESERVED,
)

_EVENT = struct.Struct(RECORD_EVENT_FORMAT)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One recorded event and its surroundings."""

    event: Event
    ts_ns: int  # CLOCK_BOOTTIME
    cpu: int
    pid: int
    tgid: int
    comm: str
    cgroup: int


def decode(record: bytes) -> RawRecord:
    """A struct recorded_event as the model's event; ValueError if it is not one."""
    if len(record) < _EVENT.size:
        raise ValueError(f"a {len(record)}-byte record, not {_EVENT.size}")
    (ts, pid_tgid, cgroup, call_site, size, align, base, ptr, bytes_alloc, gfp, off, cpu, kind) = (
        fields := _EVENT.unpack_from(record)
    )[:13]
    flags, comm = fields[13:]
    if kind >= len(RECORD_KINDS):
        raise ValueError(f"record kind {kind}")
    reserved, atomic = bool(flags & RECORD_RESERVED), bool(flags & RECORD_ATOMIC)
    name = RECORD_KINDS[kind]
    event: Event
    if name == "percpu_alloc_percpu":
        event = PercpuAlloc(
            call_site if flags & RECORD_HAS_CALL_SITE else None,
            reserved,
            atomic,
            size,
            align,
            base,
            off,
            ptr,
            bytes_alloc if flags & RECORD_HAS_BYTES_ALLOC else None,
            gfp if flags & RECORD_HAS_GFP else None,
        )
    elif name == "percpu_free_percpu":
        event = PercpuFree(base, off, ptr)
    elif name == "percpu_alloc_percpu_fail":
        event = PercpuAllocFail(reserved, atomic, size, align)
    elif name == "percpu_create_chunk":
        event = PercpuCreateChunk(base)
    else:
        event = PercpuDestroyChunk(base)
    return RawRecord(
        event=event,
        ts_ns=ts,
        cpu=cpu,
        pid=pid_tgid & 0xFFFFFFFF,
        tgid=pid_tgid >> 32,
        comm=comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
        cgroup=cgroup,
    )


def ring_pages(ring_bytes: int) -> int:
    """The ring's pages: a power of two of pages (the kernel's rule), at least one."""
    pages = max(ring_bytes // mmap.PAGESIZE, 1)
    if pages & (pages - 1):
        raise BackendUnavailable(
            f"ring buffer of {ring_bytes} bytes: it must be a power of two of "
            f"{mmap.PAGESIZE}-byte pages"
        )
    return pages


class Recorder:
    """record.bpf.c attached to the five percpu tracepoints, and its ring buffer."""

    def __init__(
        self,
        *,
        nr_possible_cpus: int,
        ring_bytes: int = DEFAULT_RING_BYTES,
        bpf_dir: str | Path | None = None,
        tracefs_root: str | Path | None = None,
    ) -> None:
        pages = ring_pages(ring_bytes)
        layout = read_layout(tracefs_root)
        layout.check_required(RECORDER_FIELDS)
        self.fields = layout.fields
        compile_env_check()
        directory = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        defines = recorder_defines(layout, ring_pages=pages)
        self._set = spawn_loader(LoadRequest(str(directory), defines, program="recorder"))
        self.nr_possible_cpus = nr_possible_cpus
        try:
            self.ring = RingBuffer(self._set.maps["pcpu_rec_ring"], pages * mmap.PAGESIZE)
        except BaseException:
            self._set.close()
            raise

    @property
    def program_fds(self) -> dict[str, int]:
        """The programs' fds by function (for their run statistics)."""
        return dict(self._set.programs)

    def drain(self) -> list[RawRecord]:
        """Every committed record, decoded, in the ring's order."""
        out: list[RawRecord] = []
        self.ring.drain(lambda record: out.append(decode(record)))
        return out

    def wait(self, timeout: float) -> None:
        """Until records are there, or ``timeout`` seconds."""
        self.ring.wait(timeout)

    def lost(self) -> list[int]:
        """Events each CPU could not record (the ring was full), since the start."""
        value = syscalls.lookup_elem(
            self._set.maps["pcpu_rec_lost"], struct.pack("<I", 0), 8 * self.nr_possible_cpus
        )
        if value is None:
            return [0] * self.nr_possible_cpus
        return list(struct.unpack(f"<{self.nr_possible_cpus}Q", value))

    def close(self) -> None:
        """Unmap the ring and close every fd: the programs detach."""
        self.ring.close()
        self._set.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
