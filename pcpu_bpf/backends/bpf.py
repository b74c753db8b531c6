"""The live-kernel backend: raw tracepoint programs aggregate in BPF maps; snapshots read them.

Startup checks the kernel contract once (tracefs, the five tracepoints and their fields,
kernel headers, bcc), compiles with -D defines for this kernel, loads, then attaches; any
failure is one PcpuError naming the fix. A missing optional field degrades what is counted
and is logged once. ``attach=False`` loads without attaching, for BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.loader import (
    PROGRAMS,
    LoadedPrograms,
    build_cflags,
    compile_env_check,
    default_bpf_dir,
    program_defines,
)
from pcpu_bpf.bpf.maps import read_tables
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.errors import BackendUnavailable, StatsParseError
from pcpu_bpf.kernel.procfs import kernel_release, read_possible_cpus
from pcpu_bpf.kernel.shared_read import SharedRead
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.layout import (
    DEFAULT_LIVE_CAPACITY,
    DEFAULT_SITE_CAPACITY,
    MAX_TABLE_CAPACITY,
)
from pcpu_bpf.model.snapshot import ProgramStats, Snapshot
from pcpu_bpf.model.tables import (
    SnapshotContext,
    Tables,
    map_usage,
    tables_to_snapshot,
)

log = logging.getLogger(__name__)

BCC_FIX = (
    "bcc is not importable from this Python: install python3-bpfcc (apt) and use a venv "
    "made with --system-site-packages (PyPI's 'bcc' is an unrelated package)"
)


class _Resolver(Protocol):
    def resolve(self, addr: int) -> str: ...


Symbolize = Callable[[int], str]


class BpfBackend(Backend):
    """Percpu allocator profile from the live kernel, aggregated in BPF maps."""

    name = "bpf"

    def __init__(
        self,
        *,
        live_capacity: int = DEFAULT_LIVE_CAPACITY,
        site_capacity: int = DEFAULT_SITE_CAPACITY,
        bpf_dir: str | Path | None = None,
        tracefs_root: str | Path | None = None,
        symbolizer: Symbolize | _Resolver | None = None,
        kernel_stats: Callable[[], KernelStats | None] | None = None,
        min_read_interval: float = 0.0,
        attach: bool = True,
    ) -> None:
        check_capacity("live_capacity", live_capacity)
        check_capacity("site_capacity", site_capacity)
        try:
            import bcc
        except ImportError as exc:
            raise BackendUnavailable(f"{BCC_FIX} ({exc})") from exc
        layout = read_layout(tracefs_root)
        layout.check_required()
        self._fields_available = layout.fields_available()
        missing = layout.missing_optional()
        if missing:
            log.warning(
                "this kernel's tracepoints lack %s: call sites read 'unknown' without "
                "call_site, bytes are size x possible CPUs without bytes_alloc",
                ", ".join(f"{ev}.{f}" for ev, f in missing),
            )
        try:
            self._release = kernel_release()
            self.possible_cpus = read_possible_cpus()
        except (OSError, StatsParseError) as exc:
            raise BackendUnavailable(f"cannot read the kernel's release or CPUs: {exc}") from exc
        compile_env_check(self._release)
        self.live_capacity = live_capacity
        self.site_capacity = site_capacity
        directory = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        defines = program_defines(
            layout,
            live_capacity=live_capacity,
            site_capacity=site_capacity,
            nr_possible_cpus=self.possible_cpus,
        )
        self._symbolize = _symbolizer(symbolizer)
        # Reading percpu_stats holds the allocator's lock: at most once per interval,
        # whoever asks (scrapers share one reading).
        self._kernel_stats = SharedRead(kernel_stats or _default_kernel_stats(), min_read_interval)
        self._programs: LoadedPrograms | None = LoadedPrograms(
            bcc, bpf_dir=directory, cflags=build_cflags(directory, defines)
        )
        if attach:
            try:
                self._programs.attach()
            except Exception:
                self.close()
                raise

    @property
    def program_fds(self) -> dict[str, int]:
        """Program function name -> fd (for BPF_PROG_TEST_RUN and prog info)."""
        return dict(self._live().fds)

    def _live(self) -> LoadedPrograms:
        if self._programs is None:
            raise BackendUnavailable("the bpf backend is closed")
        return self._programs

    def read_tables(self) -> Tables:
        """The maps as raw tables (addresses, not names), per-CPU values summed."""
        return read_tables(self._live().table)

    def snapshot(self) -> Snapshot:
        """Read every map (summing per-CPU values) into a Snapshot; nothing is cleared."""
        programs = self._live()
        tables = self.read_tables()
        ctx = SnapshotContext(
            backend=self.name,
            kernel=self._release,
            timestamp=time.monotonic(),
            kernel_stats=self._kernel_stats(),
            fields_available=self._fields_available,
            programs=self._program_stats(programs),
            maps=map_usage(tables, self.live_capacity, self.site_capacity),
        )
        return tables_to_snapshot(tables, self._symbolize, ctx)

    def _program_stats(self, programs: LoadedPrograms) -> dict[str, ProgramStats]:
        # run_cnt and run_time_ns only move while bpf_stats are on; then they mean nothing.
        stats_on = syscalls.bpf_stats_enabled()
        out = {}
        for function in PROGRAMS.values():
            info = syscalls.prog_info(programs.fds[function])
            out[function] = ProgramStats(
                runs=info.run_cnt if stats_on else None,
                run_time_ns=info.run_time_ns if stats_on else None,
                recursion_misses=info.recursion_misses,
            )
        return out

    def close(self) -> None:
        """Detach and free programs and maps; idempotent."""
        programs, self._programs = self._programs, None
        if programs is not None:
            programs.close()


def check_capacity(what: str, value: int) -> None:
    """BackendUnavailable unless a kernel hash map can hold ``value`` entries."""
    if not 1 <= value <= MAX_TABLE_CAPACITY:
        raise BackendUnavailable(
            f"{what} must be between 1 and {MAX_TABLE_CAPACITY} (the most entries the kernel "
            f"gives a hash map), got {value}"
        )


def _symbolizer(given: Symbolize | _Resolver | None) -> Symbolize:
    if given is None:
        from pcpu_bpf.model.symbolizer import Symbolizer

        try:
            resolver = Symbolizer.from_file("/proc/kallsyms")
        except OSError as exc:
            raise BackendUnavailable(f"cannot read /proc/kallsyms: {exc}") from exc
        if resolver.is_restricted:
            log.warning(
                "/proc/kallsyms shows no addresses (needs CAP_SYSLOG; empty under systemd's "
                "ProtectKernelTunables=): call sites are hex"
            )
        return resolver.resolve
    if callable(given):
        return given
    return given.resolve


def _default_kernel_stats() -> Callable[[], KernelStats | None]:
    from pcpu_bpf.kernel.reader import read_kernel_stats

    return read_kernel_stats
