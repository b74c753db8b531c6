"""Compile and load the BPF programs of bpf_programs/ with bcc; attaching is a separate step.

bcc rewrites map calls only in the file it compiles, so each program file is its own
module: ``pcpu_maps.bpf.c`` creates the maps as shared tables first, then every program
module binds to them as extern tables. Configuration is only -D defines: capacities,
possible CPUs, and the raw argument index of every tracepoint field this kernel has.
Tests load without attaching and drive the programs with BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.tracefs import TracepointLayout
from pcpu_bpf.errors import BackendUnavailable, ProgramLoadError

MAPS_SOURCE = "pcpu_maps.bpf.c"
HEADERS_FIX = (
    "run ./setup.sh, or link headers by hand: ln -s /usr/src/linux-headers-<ver>-amd64 "
    "/lib/modules/$(uname -r)/build (and the -common dir as .../source)"
)
PRIVILEGE_FIX = (
    "run as root (or with CAP_BPF, CAP_PERFMON, CAP_SYSLOG and CAP_DAC_READ_SEARCH); "
    "see `pcpu-bpf doctor`"
)


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One BPF program: the tracepoint it serves, its source file, its function."""

    tracepoint: str
    source: str
    function: str


PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("percpu_alloc_percpu", "percpu_alloc.bpf.c", "on_alloc"),
    ProgramSpec("percpu_free_percpu", "percpu_free.bpf.c", "on_free"),
    ProgramSpec("percpu_alloc_percpu_fail", "percpu_fail.bpf.c", "on_alloc_fail"),
    ProgramSpec("percpu_create_chunk", "percpu_chunk.bpf.c", "on_create_chunk"),
    ProgramSpec("percpu_destroy_chunk", "percpu_chunk.bpf.c", "on_destroy_chunk"),
)

# Prefix of the -D argument-index defines, per tracepoint (see bpf_programs/README.md).
_DEFINE_PREFIX = {
    "percpu_alloc_percpu": "ARG_ALLOC_",
    "percpu_free_percpu": "ARG_FREE_",
    "percpu_alloc_percpu_fail": "ARG_FAIL_",
    "percpu_create_chunk": "ARG_CREATE_CHUNK_",
    "percpu_destroy_chunk": "ARG_DESTROY_CHUNK_",
}

# The maps of pcpu_maps.h, as bcc names them.
MAP_NAMES: tuple[str, ...] = (
    "pcpu_live",
    "pcpu_sites",
    "pcpu_sizes",
    "pcpu_failures",
    "pcpu_fail_sizes",
    "pcpu_chunks",
    "pcpu_drops",
    "pcpu_untracked",
    "pcpu_live_count",
)

# bcc resolves extern tables by name through one process-wide registry, where the first
# shared table of a name wins: a second set loaded alongside would bind its programs to
# the first set's maps. So one set per process, checked under a lock.
_compile_lock = threading.Lock()
_loaded: list[LoadedPrograms] = []


def default_bpf_dir() -> Path:
    """Where the installed package keeps the .bpf.c files."""
    return Path(str(importlib.resources.files("bpf_programs")))


def kernel_headers(release: str, modules_root: str | Path = "/lib/modules") -> Path | None:
    """The resolved headers directory bcc will compile against, or None when missing."""
    build = Path(modules_root) / release / "build"
    return build.resolve() if (build / "include").is_dir() else None


def build_cflags(
    layout: TracepointLayout,
    *,
    bpf_dir: Path,
    live_capacity: int,
    site_capacity: int,
    nr_possible_cpus: int,
) -> list[str]:
    """The compiler flags that configure the programs for this kernel."""
    flags = [
        f"-I{bpf_dir}",
        f"-DLIVE_CAPACITY={live_capacity}",
        f"-DSITE_CAPACITY={site_capacity}",
        f"-DNR_POSSIBLE_CPUS={nr_possible_cpus}",
    ]
    for event, names in sorted(layout.fields.items()):
        prefix = _DEFINE_PREFIX[event]
        flags += [f"-D{prefix}{name.upper()}={i}" for i, name in enumerate(names)]
    return flags


def _wrap(exc: Exception, what: str) -> Exception:
    msg = str(exc)
    if "super-user" in msg or "Operation not permitted" in msg or isinstance(exc, PermissionError):
        return BackendUnavailable(f"{what}: {msg}: {PRIVILEGE_FIX}")
    return ProgramLoadError(f"{what}: {msg}")


class LoadedPrograms:
    """The five programs and their shared maps, loaded into the kernel (attached on demand)."""

    def __init__(self, bcc: ModuleType, *, bpf_dir: Path, cflags: list[str]) -> None:
        self._bcc = bcc
        self._modules: dict[str, Any] = {}
        self._attached: list[tuple[Any, str]] = []
        self.fds: dict[str, int] = {}
        with _compile_lock:
            if _loaded:
                raise ProgramLoadError(
                    "the pcpu-bpf programs are already loaded in this process (bcc shares "
                    "their maps by name): close the other BpfBackend first"
                )
            try:
                for source in [MAPS_SOURCE, *dict.fromkeys(p.source for p in PROGRAMS)]:
                    path = bpf_dir / source
                    if not path.is_file():
                        raise ProgramLoadError(f"BPF source {path} not found: check --bpf-dir")
                    self._modules[source] = bcc.BPF(src_file=str(path).encode(), cflags=cflags)
                for p in PROGRAMS:
                    module = self._modules[p.source]
                    fn = module.load_func(p.function.encode(), bcc.BPF.RAW_TRACEPOINT)
                    self.fds[p.function] = int(fn.fd)
                self._check_bindings()
            except ProgramLoadError:
                self.close()
                raise
            except Exception as exc:  # bcc raises bare Exception with its message
                self.close()
                raise _wrap(exc, "loading the BPF programs failed") from exc
            _loaded.append(self)

    def _check_bindings(self) -> None:
        # Every program must use exactly the maps this set created (see _loaded).
        own = {syscalls.map_id(self.table(name).map_fd) for name in MAP_NAMES}
        for function, fd in self.fds.items():
            foreign = set(syscalls.prog_map_ids(fd)) - own
            if foreign:
                raise ProgramLoadError(
                    f"program {function} is bound to maps {sorted(foreign)} of another bcc "
                    "module in this process: close it first"
                )

    def table(self, name: str) -> Any:
        """A bcc table object of the shared maps (owned by the maps module)."""
        return self._modules[MAPS_SOURCE].get_table(name.encode())

    def attach(self) -> None:
        """Attach every program to its raw tracepoint; on failure, detach what was attached."""
        try:
            for p in PROGRAMS:
                module = self._modules[p.source]
                module.attach_raw_tracepoint(tp=p.tracepoint.encode(), fn_name=p.function.encode())
                self._attached.append((module, p.tracepoint))
        except Exception as exc:
            self.detach()
            raise _wrap(exc, f"attaching to raw tracepoint {p.tracepoint} failed") from exc

    def detach(self) -> None:
        """Detach every attached program; loaded programs and maps stay."""
        while self._attached:
            module, tp = self._attached.pop()
            module.detach_raw_tracepoint(tp=tp.encode())

    def close(self) -> None:
        """Detach and release programs and maps; idempotent."""
        self.detach()
        self.fds.clear()
        if self in _loaded:
            _loaded.remove(self)
        # Program modules first: they hold extern references to the maps module's tables.
        for source in reversed(list(self._modules)):
            self._modules.pop(source).cleanup()


def compile_env_check(release: str | None = None) -> None:
    """BackendUnavailable when bcc could not compile here at all (no kernel headers)."""
    release = release or os.uname().release
    if kernel_headers(release) is None:
        raise BackendUnavailable(
            f"kernel headers not found at /lib/modules/{release}/build: {HEADERS_FIX}"
        )
