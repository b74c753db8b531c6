"""Compile, load, attach and pin bpf_programs/pcpu.bpf.c: the short-lived loader process.

Run as ``python -m pcpu_bpf.bpf.loader`` by `pcpu_bpf.bpf.handoff`, so bcc and LLVM
live only in a process that exits once the programs are loaded: it reads a JSON request
on stdin, compiles with bcc, creates the layout record, attaches the programs
(BPF_RAW_TRACEPOINT_OPEN, so each attachment is a link fd), pins everything when asked,
and sends the map, program and link fds with a JSON manifest over the Unix socket it was
given (SCM_RIGHTS). Configuration is only -D defines, all built by `program_defines`.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.footprint import bytes_per_cpu
from pcpu_bpf.bpf.maps import (
    BPF_MAPS,
    META_FORMAT,
    META_MAP,
    PROGRAMS,
    Capacities,
    check_maps,
)
from pcpu_bpf.bpf.tracefs import (
    OPTIONAL_FIELDS,
    RECORDER_FIELDS,
    RECORDER_OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    TracepointLayout,
)
from pcpu_bpf.errors import BackendUnavailable, ProgramLoadError
from pcpu_bpf.model.layout import (
    CHUNK_CAPACITY,
    CHUNK_CREATED,
    CHUNK_DESTROYED,
    COUNTER_OFFSETS,
    FAILURE_ATOMIC_WEIGHT,
    HELPER_RANGES_FORMAT,
    MAX_HELPER_RANGES,
    NR_COUNTERS,
    NR_SIZE_SLOTS,
    OWNER_STACK_DEPTH,
    OWNER_STACK_SKIP,
    OWNER_UNRESOLVED_REASONS,
    PER_CPU_DROPS,
    RECORD_ATOMIC,
    RECORD_HAS_BYTES_ALLOC,
    RECORD_HAS_CALL_SITE,
    RECORD_HAS_GFP,
    RECORD_KINDS,
    RECORD_RESERVED,
    SIZE_BUCKET_SHIFT,
    SIZE_SUM_SLOT,
)

__all__ = ["PROGRAMS", "LoadRequest", "load", "program_defines", "recorder_defines"]

SOURCE = "pcpu.bpf.c"
HEADER = "pcpu.h"
RECORDER_SOURCE = "record.bpf.c"
# Tracepoint -> the function of record.bpf.c that serves it.
RECORDER_PROGRAMS: dict[str, str] = {
    "percpu_alloc_percpu": "rec_alloc",
    "percpu_free_percpu": "rec_free",
    "percpu_alloc_percpu_fail": "rec_alloc_fail",
    "percpu_create_chunk": "rec_create_chunk",
    "percpu_destroy_chunk": "rec_destroy_chunk",
}
RECORDER_MAPS = ("pcpu_rec_ring", "pcpu_rec_lost")
HEADERS_FIX = (
    "run ./setup.sh, or link headers by hand: ln -s /usr/src/linux-headers-<ver>-amd64 "
    "/lib/modules/$(uname -r)/build (and the -common dir as .../source)"
)
PRIVILEGE_FIX = (
    "run as root (or with CAP_BPF, CAP_PERFMON, CAP_SYSLOG and CAP_DAC_READ_SEARCH); "
    "see `pcpu-bpf doctor`"
)
BCC_FIX = (
    "bcc is not importable from this Python: install python3-bpfcc (apt) and use a venv "
    "made with --system-site-packages (PyPI's 'bcc' is an unrelated package)"
)

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h

# Prefix of the -D argument-index defines, per tracepoint (see bpf_programs/README.md).
_DEFINE_PREFIX = {
    "percpu_alloc_percpu": "ARG_ALLOC_",
    "percpu_free_percpu": "ARG_FREE_",
    "percpu_alloc_percpu_fail": "ARG_FAIL_",
    "percpu_create_chunk": "ARG_CREATE_CHUNK_",
    "percpu_destroy_chunk": "ARG_DESTROY_CHUNK_",
}


def default_bpf_dir() -> Path:
    """Where the installed package keeps pcpu.bpf.c and pcpu.h."""
    return Path(str(importlib.resources.files("bpf_programs")))


def kernel_headers(release: str, modules_root: str | Path = "/lib/modules") -> Path | None:
    """The resolved headers directory bcc will compile against, or None when missing."""
    build = Path(modules_root) / release / "build"
    return build.resolve() if (build / "include").is_dir() else None


def program_defines(
    layout: TracepointLayout,
    *,
    live_capacity: int,
    site_capacity: int,
    nr_possible_cpus: int,
    owners: bool = False,
) -> dict[str, int]:
    """Every define the C needs, name -> value; the C defines none of these itself."""
    defines = {
        "OWNERS": int(owners),
        "OWNER_STACK_SKIP": OWNER_STACK_SKIP,
        "OWNER_STACK_DEPTH": OWNER_STACK_DEPTH,
        "MAX_HELPER_RANGES": MAX_HELPER_RANGES,
        "LIVE_CAPACITY": live_capacity,
        "SITE_CAPACITY": site_capacity,
        "NR_POSSIBLE_CPUS": nr_possible_cpus,
        "SIZE_BUCKET_SHIFT": SIZE_BUCKET_SHIFT,
        "NR_SIZE_SLOTS": NR_SIZE_SLOTS,
        "SIZE_SUM_SLOT": SIZE_SUM_SLOT,
        "FAILURE_ATOMIC_WEIGHT": FAILURE_ATOMIC_WEIGHT,
        "CHUNK_CREATED": CHUNK_CREATED,
        "CHUNK_DESTROYED": CHUNK_DESTROYED,
        "NR_COUNTERS": NR_COUNTERS,
        "CHUNK_CAPACITY": CHUNK_CAPACITY,
    }
    defines |= {f"{group.upper()}_AT": at for group, at in COUNTER_OFFSETS.items()}
    defines |= {f"DROP_{reason.upper()}": i for i, reason in enumerate(PER_CPU_DROPS)}
    defines |= {f"OWNER_{why.upper()}": i for i, why in enumerate(OWNER_UNRESOLVED_REASONS)}
    return defines | argument_defines(layout, REQUIRED_FIELDS, OPTIONAL_FIELDS)


def recorder_defines(layout: TracepointLayout, *, ring_pages: int) -> dict[str, int]:
    """Every define record.bpf.c needs: the ring's pages, the kinds and flags, and the
    argument index of every field it keeps."""
    defines = {
        "RING_PAGES": ring_pages,
        "RECORD_RESERVED": RECORD_RESERVED,
        "RECORD_ATOMIC": RECORD_ATOMIC,
        "RECORD_HAS_CALL_SITE": RECORD_HAS_CALL_SITE,
        "RECORD_HAS_BYTES_ALLOC": RECORD_HAS_BYTES_ALLOC,
        "RECORD_HAS_GFP": RECORD_HAS_GFP,
    }
    # RECORD_KIND_ALLOC, _FREE, _FAIL, _CREATE_CHUNK, _DESTROY_CHUNK: RECORD_KINDS' order
    defines |= {f"RECORD_KIND_{_DEFINE_PREFIX[e][4:-1]}": i for i, e in enumerate(RECORD_KINDS)}
    return defines | argument_defines(layout, RECORDER_FIELDS, RECORDER_OPTIONAL_FIELDS)


def argument_defines(
    layout: TracepointLayout,
    wanted: Mapping[str, tuple[str, ...]],
    optional: Mapping[str, tuple[str, ...]],
) -> dict[str, int]:
    """ARG_<EVENT>_<FIELD>: the argument index of each field a program reads, for the
    fields this kernel's tracepoints have (an optional one it lacks gets no define)."""
    defines = {}
    for event, prefix in _DEFINE_PREFIX.items():
        names = layout.fields[event]
        for field in wanted[event] + optional.get(event, ()):
            if field in names:
                defines[f"{prefix}{field.upper()}"] = names.index(field)
    return defines


def build_cflags(bpf_dir: Path, defines: dict[str, int]) -> list[str]:
    """The compiler flags: the include directory, then one -D per define."""
    return [f"-I{bpf_dir}", *(f"-D{name}={value}" for name, value in defines.items())]


def layout_digest(bpf_dir: Path, defines: dict[str, int], helpers: Iterable[str] = ()) -> bytes:
    """sha256 of the C source, its header, every define and the helpers the owners are
    found behind: equal digests, equal maps (and equal owners)."""
    h = hashlib.sha256()
    for name in (SOURCE, HEADER):
        path = bpf_dir / name
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            raise ProgramLoadError(f"BPF source {path} unreadable: {exc.strerror}") from None
    h.update(json.dumps(sorted(defines.items())).encode())
    h.update(META_FORMAT.encode())
    if defines.get("OWNERS"):
        h.update(json.dumps(sorted(helpers)).encode())
    return h.digest()


def compile_env_check(release: str | None = None) -> None:
    """BackendUnavailable when bcc could not compile here at all (no kernel headers)."""
    release = release or os.uname().release
    if kernel_headers(release) is None:
        raise BackendUnavailable(
            f"kernel headers not found at /lib/modules/{release}/build: {HEADERS_FIX}"
        )


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What the loader process is asked to do."""

    bpf_dir: str
    defines: dict[str, int]
    attach: bool = True
    pin_dir: str | None = None
    program: str = "profiler"  # or "recorder": record.bpf.c, never pinned
    helpers: tuple[str, ...] = ()  # with OWNERS: the functions owners are found behind

    def to_json(self) -> str:
        return json.dumps(
            {
                "bpf_dir": self.bpf_dir,
                "defines": self.defines,
                "attach": self.attach,
                "pin_dir": self.pin_dir,
                "program": self.program,
                "helpers": list(self.helpers),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LoadRequest:
        d = json.loads(text)
        return cls(
            d["bpf_dir"],
            {k: int(v) for k, v in d["defines"].items()},
            d["attach"],
            d["pin_dir"],
            d.get("program", "profiler"),
            tuple(d.get("helpers", ())),
        )


def _wrap(exc: Exception, what: str) -> Exception:
    msg = str(exc)
    if "super-user" in msg or "Operation not permitted" in msg or isinstance(exc, PermissionError):
        return BackendUnavailable(f"{what}: {msg}: {PRIVILEGE_FIX}")
    return ProgramLoadError(f"{what}: {msg}")


def _compile(
    request: LoadRequest, source: str, functions: Iterable[str], what: str
) -> tuple[Any, dict[str, int]]:
    """``source`` in the request's BPF directory compiled by bcc, and its raw tracepoint
    programs loaded: the module (which owns the fds) and each program's fd."""
    bcc = _import_bcc()
    bpf_dir = Path(request.bpf_dir)
    path = bpf_dir / source
    if not path.is_file():
        raise ProgramLoadError(f"BPF source {path} not found: check --bpf-dir")
    try:
        module = bcc.BPF(src_file=str(path).encode(), cflags=build_cflags(bpf_dir, request.defines))
    except Exception as exc:  # bcc raises bare Exception with its message
        raise _wrap(exc, f"compiling {what} failed") from exc
    try:
        programs = {
            fn: int(module.load_func(fn.encode(), bcc.BPF.RAW_TRACEPOINT).fd) for fn in functions
        }
    except Exception as exc:
        raise _wrap(exc, f"loading {what} failed") from exc
    return module, programs


def load(request: LoadRequest) -> tuple[dict[str, Any], list[int], Any]:
    """Compile, load, attach and pin as asked: the manifest, the fds it indexes, and the
    bcc module that owns the maps' and programs' fds (links and the record are ours)."""
    from pcpu_bpf.bpf import pins

    if request.program == "recorder":
        return load_recorder(request)
    module, programs = _compile(request, SOURCE, PROGRAMS.values(), "the BPF programs")
    maps = {name: int(module.get_table(name.encode()).map_fd) for name in BPF_MAPS}
    try:
        maps[META_MAP] = syscalls.create_map(
            syscalls.BPF_MAP_TYPE_ARRAY, 4, struct.calcsize(META_FORMAT), 1, META_MAP
        )
    except OSError as exc:
        raise _wrap(exc, "creating the layout record failed") from exc
    infos = {name: syscalls.map_info(fd) for name, fd in maps.items()}
    check_maps(
        infos, Capacities(request.defines["LIVE_CAPACITY"], request.defines["SITE_CAPACITY"])
    )
    # os.cpu_count() is the CPUs online, what htab_map_alloc sizes its counter by.
    per_cpu = bytes_per_cpu(infos.values(), len(programs), os.cpu_count() or 1)
    if request.defines.get("OWNERS"):
        _fill_helpers(maps["pcpu_helpers"], request.helpers)
    started_ns = time.time_ns()
    digest = layout_digest(Path(request.bpf_dir), request.defines, request.helpers)
    syscalls.update_elem(
        maps[META_MAP], struct.pack("<I", 0), struct.pack(META_FORMAT, digest, started_ns, per_cpu)
    )
    links = _attach(programs, PROGRAMS) if request.attach else {}
    if request.pin_dir is not None:
        pins.pin_set(Path(request.pin_dir), maps, programs, links)
    manifest, fds = _manifest(maps, programs, links)
    manifest.update(
        layout=digest.hex(),
        started_ns=started_ns,
        percpu_bytes_per_cpu=per_cpu,
        pinned=request.pin_dir,
    )
    return manifest, fds, module


def _fill_helpers(fd: int, helpers: Iterable[str]) -> None:
    """Write the code ranges of ``helpers`` (from /proc/kallsyms) into pcpu_helpers."""
    from pcpu_bpf.model.symbolizer import Symbolizer

    try:
        symbols = Symbolizer.from_file("/proc/kallsyms")
    except OSError as exc:
        raise BackendUnavailable(f"owners need /proc/kallsyms: {exc}") from exc
    if symbols.is_restricted:
        raise BackendUnavailable(f"owners need the addresses of /proc/kallsyms: {PRIVILEGE_FIX}")
    ranges = symbols.ranges(helpers)
    if len(ranges) > MAX_HELPER_RANGES:
        raise ProgramLoadError(
            f"the helpers have {len(ranges)} code ranges in kallsyms, the programs take at "
            f"most {MAX_HELPER_RANGES}: name fewer helpers"
        )
    pad = [0] * (MAX_HELPER_RANGES - len(ranges))
    value = struct.pack(
        HELPER_RANGES_FORMAT,
        len(ranges),
        *(start for start, _ in ranges),
        *pad,
        *(end for _, end in ranges),
        *pad,
    )
    syscalls.update_elem(fd, struct.pack("<I", 0), value)


def _attach(programs: dict[str, int], tracepoints: dict[str, str]) -> dict[str, int]:
    """Each program on its raw tracepoint: the links' fds by tracepoint."""
    links: dict[str, int] = {}
    for tracepoint, fn in tracepoints.items():
        try:
            links[tracepoint] = syscalls.raw_tracepoint_open(programs[fn], tracepoint)
        except OSError as exc:
            raise _wrap(exc, f"attaching to raw tracepoint {tracepoint} failed") from exc
    return links


def _manifest(
    maps: dict[str, int], programs: dict[str, int], links: dict[str, int]
) -> tuple[dict[str, Any], list[int]]:
    """What the loader hands over: the fds in one list, and their indexes by name."""
    fds: list[int] = []

    def index(fd: int) -> int:
        fds.append(fd)
        return len(fds) - 1

    manifest: dict[str, Any] = {
        "maps": {name: index(fd) for name, fd in maps.items()},
        "programs": {fn: index(fd) for fn, fd in programs.items()},
        "links": {tp: index(fd) for tp, fd in links.items()},
    }
    return manifest, fds


def _import_bcc() -> Any:
    try:
        import bcc
    except ImportError as exc:
        raise BackendUnavailable(f"{BCC_FIX} ({exc})") from exc
    return bcc


def load_recorder(request: LoadRequest) -> tuple[dict[str, Any], list[int], Any]:
    """record.bpf.c compiled, loaded and attached: the ring buffer, the lost counter,
    the programs and their links (a recorder is never pinned: it ends with its holder)."""
    module, programs = _compile(
        request, RECORDER_SOURCE, RECORDER_PROGRAMS.values(), "the recorder"
    )
    maps = {name: int(module.get_table(name.encode()).map_fd) for name in RECORDER_MAPS}
    links = _attach(programs, RECORDER_PROGRAMS) if request.attach else {}
    manifest, fds = _manifest(maps, programs, links)
    manifest.update(layout="", started_ns=time.time_ns(), percpu_bytes_per_cpu=0, pinned=None)
    return manifest, fds, module


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], fds)


def _die_with(parent: int) -> None:
    """Be killed when ``parent`` dies: a daemon killed while its loader compiles must not
    leave the loader to attach (and pin) a set nobody asked for any more."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def main() -> int:
    """The loader process: request on stdin, manifest and fds to the socket fd in argv
    (and the parent's pid, to die with it)."""
    if len(sys.argv) > 2:
        _die_with(int(sys.argv[2]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        manifest, fds, _ = load(LoadRequest.from_json(sys.stdin.read()))
    except (BackendUnavailable, ProgramLoadError) as exc:
        kind = "unavailable" if isinstance(exc, BackendUnavailable) else "load"
        _send(sock, {"error": kind, "message": str(exc)}, [])
        return 1
    except Exception as exc:  # a bug: still one message; the traceback goes to stderr
        traceback.print_exc()
        _send(sock, {"error": "load", "message": f"the loader failed: {exc!r}"}, [])
        return 1
    _send(sock, manifest, fds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
