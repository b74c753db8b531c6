"""Compile and load bpf_programs/pcpu.bpf.c with bcc as one module; attaching is separate.

Configuration is only -D defines, all built by `program_defines`: capacities, possible
CPUs, the slots and lengths of model/layout.py, and the raw argument index of every
tracepoint field the programs read that this kernel has. Each loaded set owns its maps,
so any number of sets can live in one process. Tests load without attaching and drive
the programs with BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from pcpu_bpf.bpf.tracefs import OPTIONAL_FIELDS, REQUIRED_FIELDS, TracepointLayout
from pcpu_bpf.errors import BackendUnavailable, ProgramLoadError
from pcpu_bpf.model.layout import (
    CHUNK_CREATED,
    CHUNK_DESTROYED,
    DROP_REASONS,
    FAILURE_ATOMIC_WEIGHT,
    LIVE_DELETED,
    LIVE_INSERTED,
    NR_FAILURE_CLASSES,
    NR_SIZE_SLOTS,
    SIZE_BUCKET_SHIFT,
    SIZE_SUM_SLOT,
)

SOURCE = "pcpu.bpf.c"
HEADERS_FIX = (
    "run ./setup.sh, or link headers by hand: ln -s /usr/src/linux-headers-<ver>-amd64 "
    "/lib/modules/$(uname -r)/build (and the -common dir as .../source)"
)
PRIVILEGE_FIX = (
    "run as root (or with CAP_BPF, CAP_PERFMON, CAP_SYSLOG and CAP_DAC_READ_SEARCH); "
    "see `pcpu-bpf doctor`"
)

# Tracepoint -> the function of pcpu.bpf.c that serves it.
PROGRAMS: dict[str, str] = {
    "percpu_alloc_percpu": "on_alloc",
    "percpu_free_percpu": "on_free",
    "percpu_alloc_percpu_fail": "on_alloc_fail",
    "percpu_create_chunk": "on_create_chunk",
    "percpu_destroy_chunk": "on_destroy_chunk",
}

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
) -> dict[str, int]:
    """Every define the C needs, name -> value; the C defines none of these itself."""
    defines = {
        "LIVE_CAPACITY": live_capacity,
        "SITE_CAPACITY": site_capacity,
        "NR_POSSIBLE_CPUS": nr_possible_cpus,
        "SIZE_BUCKET_SHIFT": SIZE_BUCKET_SHIFT,
        "NR_SIZE_SLOTS": NR_SIZE_SLOTS,
        "SIZE_SUM_SLOT": SIZE_SUM_SLOT,
        "NR_HISTOGRAM_SLOTS": SIZE_SUM_SLOT + 1,
        "FAILURE_ATOMIC_WEIGHT": FAILURE_ATOMIC_WEIGHT,
        "NR_FAILURE_CLASSES": NR_FAILURE_CLASSES,
        "NR_DROP_REASONS": len(DROP_REASONS),
        "CHUNK_CREATED": CHUNK_CREATED,
        "CHUNK_DESTROYED": CHUNK_DESTROYED,
        "NR_CHUNK_SLOTS": max(CHUNK_CREATED, CHUNK_DESTROYED) + 1,
        "LIVE_INSERTED": LIVE_INSERTED,
        "LIVE_DELETED": LIVE_DELETED,
        "NR_LIVE_COUNT_SLOTS": max(LIVE_INSERTED, LIVE_DELETED) + 1,
    }
    defines |= {f"DROP_{reason.upper()}": i for i, reason in enumerate(DROP_REASONS)}
    for event, prefix in _DEFINE_PREFIX.items():
        names = layout.fields[event]
        for field in REQUIRED_FIELDS[event] + OPTIONAL_FIELDS.get(event, ()):
            if field in names:
                defines[f"{prefix}{field.upper()}"] = names.index(field)
    return defines


def build_cflags(bpf_dir: Path, defines: dict[str, int]) -> list[str]:
    """The compiler flags: the include directory, then one -D per define."""
    return [f"-I{bpf_dir}", *(f"-D{name}={value}" for name, value in defines.items())]


def _wrap(exc: Exception, what: str) -> Exception:
    msg = str(exc)
    if "super-user" in msg or "Operation not permitted" in msg or isinstance(exc, PermissionError):
        return BackendUnavailable(f"{what}: {msg}: {PRIVILEGE_FIX}")
    return ProgramLoadError(f"{what}: {msg}")


class LoadedPrograms:
    """The five programs and their maps, one bcc module in the kernel (attached on demand)."""

    def __init__(self, bcc: ModuleType, *, bpf_dir: Path, cflags: list[str]) -> None:
        self._attached: list[str] = []
        self.fds: dict[str, int] = {}
        path = bpf_dir / SOURCE
        if not path.is_file():
            raise ProgramLoadError(f"BPF source {path} not found: check --bpf-dir")
        try:
            self._module: Any = bcc.BPF(src_file=str(path).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception with its message
            raise _wrap(exc, "compiling the BPF programs failed") from exc
        try:
            for function in PROGRAMS.values():
                fn = self._module.load_func(function.encode(), bcc.BPF.RAW_TRACEPOINT)
                self.fds[function] = int(fn.fd)
        except Exception as exc:
            self.close()
            raise _wrap(exc, "loading the BPF programs failed") from exc

    def table(self, name: str) -> Any:
        """A bcc table object of this set's maps."""
        return self._module.get_table(name.encode())

    def attach(self) -> None:
        """Attach every program to its raw tracepoint; on failure, detach what was attached."""
        try:
            for tracepoint, function in PROGRAMS.items():
                self._module.attach_raw_tracepoint(
                    tp=tracepoint.encode(), fn_name=function.encode()
                )
                self._attached.append(tracepoint)
        except Exception as exc:
            self.detach()
            raise _wrap(exc, f"attaching to raw tracepoint {tracepoint} failed") from exc

    def detach(self) -> None:
        """Detach every attached program; loaded programs and maps stay."""
        while self._attached:
            self._module.detach_raw_tracepoint(tp=self._attached.pop().encode())

    def close(self) -> None:
        """Detach and release programs and maps; idempotent."""
        self.detach()
        self.fds.clear()
        module, self._module = self._module, None
        if module is not None:
            module.cleanup()


def compile_env_check(release: str | None = None) -> None:
    """BackendUnavailable when bcc could not compile here at all (no kernel headers)."""
    release = release or os.uname().release
    if kernel_headers(release) is None:
        raise BackendUnavailable(
            f"kernel headers not found at /lib/modules/{release}/build: {HEADERS_FIX}"
        )
