"""The live-kernel backend: raw tracepoint programs aggregate in BPF maps; snapshots read them.

Startup checks the kernel contract once (tracefs, the five tracepoints and their fields,
kernel headers), then either adopts a compatible set pinned in bpffs (``pin_dir``: no
compile at all, counters continue) or has the loader process compile, load, attach
(and pin) a new one. This process never imports bcc: it holds the fds the loader
handed over and reads the maps through bpf(2). Any failure is one PcpuError naming the
fix. ``attach=False`` loads without attaching, for BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.backends.host_stats import DEFAULT_MAX_BPF_MAPS, HostStatsReader
from pcpu_bpf.bpf import pins, syscalls
from pcpu_bpf.bpf.handoff import spawn_loader
from pcpu_bpf.bpf.loader import (
    LoadRequest,
    compile_env_check,
    default_bpf_dir,
    layout_digest,
    program_defines,
)
from pcpu_bpf.bpf.maps import (
    PROGRAMS,
    Capacities,
    read_live_records,
    read_live_site,
    read_tables,
    read_tables_and_slots,
    read_traced_chunks,
)
from pcpu_bpf.bpf.pins import LoadedSet
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.errors import BackendUnavailable, StatsParseError
from pcpu_bpf.kernel.cgroups import CgroupPaths, unified_root
from pcpu_bpf.kernel.procfs import kernel_release, read_possible_cpus
from pcpu_bpf.kernel.shared_read import SharedRead
from pcpu_bpf.model.ages import AgeFold
from pcpu_bpf.model.breakdown import Breakdown, nr_units
from pcpu_bpf.model.chunk_map import ChunkMap
from pcpu_bpf.model.kernel_stats import KernelStats
from pcpu_bpf.model.layout import (
    DEFAULT_LIVE_CAPACITY,
    DEFAULT_SITE_CAPACITY,
    MAX_TABLE_CAPACITY,
)
from pcpu_bpf.model.live_chunks import traced_chunk_map
from pcpu_bpf.model.owners import DEFAULT_OWNERS, helper_set
from pcpu_bpf.model.ranking import DEFAULT_MAX_CGROUPS
from pcpu_bpf.model.snapshot import (
    LiveAges,
    ProgramStats,
    SiteKey,
    Snapshot,
)
from pcpu_bpf.model.tables import (
    SiteAddressKey,
    SnapshotContext,
    Tables,
    breakdown_of,
    map_usage,
    percpu_events,
    site_key,
    tables_to_snapshot,
)

log = logging.getLogger(__name__)


class _Resolver(Protocol):
    def resolve(self, addr: int) -> str: ...


Symbolize = Callable[[int], str]

# Seconds close() waits for a map read under way (reads take milliseconds).
CLOSE_TIMEOUT = 5.0


class BpfBackend(Backend):
    """Percpu allocator profile from the live kernel, aggregated in BPF maps."""

    name = "bpf"
    start_event = "attach"

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
        pin_dir: str | Path | None = None,
        min_age: float | None = None,
        max_bpf_maps: int = DEFAULT_MAX_BPF_MAPS,
        max_cgroups: int = DEFAULT_MAX_CGROUPS,
        owners: bool = DEFAULT_OWNERS,
        helpers: Sequence[str] = (),
    ) -> None:
        """``owners``: find the owner behind the known helpers (DEFAULT_HELPERS and
        ``helpers``) from kernel stacks, at a cost per allocation at a helper."""
        check_capacity("live_capacity", live_capacity)
        check_limit("max_bpf_maps", max_bpf_maps)
        check_limit("max_cgroups", max_cgroups)
        check_capacity("site_capacity", site_capacity)
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
        self.live_capacity = live_capacity
        self.site_capacity = site_capacity
        directory = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        defines = program_defines(
            layout,
            live_capacity=live_capacity,
            site_capacity=site_capacity,
            nr_possible_cpus=self.possible_cpus,
            owners=owners,
        )
        helper_names = tuple(sorted(helper_set(helpers))) if owners else ()
        self._symbolize = _symbolizer(symbolizer)
        # The allocating tasks' cgroups by path; a walk of the unified hierarchy when an
        # id is new, at most once a second.
        self._max_cgroups = max_cgroups
        self._cgroup_paths = CgroupPaths(_unified_root())
        self._cgroup_lock = threading.Lock()
        # The kernel's own figures: percpu_stats and meminfo, read between two readings of
        # the site records (one moment, for the breakdown); then every BPF map of the host
        # and the cgroups, after that bracket; all in the one throttled read below.
        self._read_kernel_stats = kernel_stats or _default_kernel_stats()
        self._host: HostStatsReader | None = None
        if kernel_stats is None:
            self._host = HostStatsReader(
                possible_cpus=self.possible_cpus,
                max_bpf_maps=max_bpf_maps,
                max_cgroups=max_cgroups,
            )
        self._min_age = min_age
        self._walk_failed = False
        self._cgroup_walk_failed = False
        self._memcg_extension = self._fields_available.get(
            ("percpu_alloc_percpu", "bytes_alloc"), False
        )
        # Reading percpu_stats holds the allocator's lock, and walking a full live table
        # takes a while: both at most once per interval, whoever asks (scrapers share one
        # reading), with the breakdown computed from the same moment.
        self._slow = SharedRead(self._read_slow, min_read_interval)
        self._last_slow: _SlowRead | None = None
        if pin_dir is not None and not attach:
            raise BackendUnavailable("a pinned set is always attached: pin_dir needs attach")
        self.adopted = False
        self._set: LoadedSet | None = None
        # Held by a read of the maps; close() takes it, so no read ever uses an fd that
        # was closed (and perhaps reused) under it.
        self._reading = threading.RLock()
        if pin_dir is not None:
            pins.check_pin_dir(Path(pin_dir))
            digest = layout_digest(directory, defines, helper_names)
            self._set = _adopt(Path(pin_dir), digest, self._capacities)
            self.adopted = self._set is not None
        if self._set is None:
            compile_env_check(self._release)
            request = LoadRequest(
                str(directory),
                defines,
                attach=attach,
                pin_dir=str(pin_dir) if pin_dir is not None else None,
                helpers=helper_names,
            )
            self._set = spawn_loader(request)
        # When the counters began, on the Snapshots' clock (monotonic).
        self._started_monotonic = time.monotonic() - max(0.0, time.time() - self.tracking_started)

    @property
    def _capacities(self) -> Capacities:
        return Capacities(self.live_capacity, self.site_capacity)

    @property
    def program_fds(self) -> dict[str, int]:
        """Program function name -> fd (for BPF_PROG_TEST_RUN and prog info)."""
        return dict(self._live().programs)

    @property
    def loaded_set(self) -> LoadedSet:
        """The fds this backend holds."""
        return self._live()

    @property
    def tracking_started(self) -> float:
        """When the set began counting, in seconds since the epoch (CLOCK_REALTIME)."""
        return self._live().started_ns / 1e9

    def _live(self) -> LoadedSet:
        if self._set is None:
            raise BackendUnavailable("the bpf backend is closed")
        return self._set

    def started_at(self) -> float | None:
        """When tracing began, on the Snapshots' clock, unless the set was adopted (its
        counters then began before this backend)."""
        return None if self.adopted else self._started_monotonic

    def read_tables(self) -> Tables:
        """The maps as raw tables (addresses, not names), per-CPU values summed."""
        with self._reading:
            return read_tables(self._live().maps, self.possible_cpus, self.site_capacity)

    def live_site(self, ptr: int) -> SiteKey | None:
        """The site of the live traced allocation at percpu pointer ``ptr``; None if none."""
        found = read_live_site(self._live().maps, ptr)
        return None if found is None else site_key(found, self._symbolize)

    def snapshot(self) -> Snapshot:
        """Read every map (summing per-CPU values) into a Snapshot; nothing is cleared.

        The kernel stats, the live-table walk and the breakdown come from the throttled
        read (at most one per min_read_interval); the counters are read every time."""
        with self._reading:
            loaded = self._live()
            slow = self._slow()
            # A read made for this call: its counters are of the breakdown's moment, so
            # the whole Snapshot is (the sites' live bytes add up to traced_live exactly).
            fresh, self._last_slow = slow is not self._last_slow, slow
            tables = slow.tables if fresh else self.read_tables()
            programs = self._program_stats(loaded)
        ctx = SnapshotContext(
            backend=self.name,
            kernel=self._release,
            timestamp=time.monotonic(),
            nr_units=slow.nr_units,
            kernel_stats=slow.kernel_stats,
            fields_available=self._fields_available,
            programs=programs,
            maps=map_usage(tables, self.live_capacity, self.site_capacity),
            tracking_start_time=loaded.started_ns / 1e9,
            profiler_percpu_bytes=loaded.percpu_bytes_per_cpu * self.possible_cpus,
            memcg_extension=self._memcg_extension,
            ages=slow.ages,
            breakdown=slow.breakdown,
            cgroup_labels=self._cgroup_labels,
            max_cgroups=self._max_cgroups,
            chunk_map=slow.chunk_map,
        )
        return tables_to_snapshot(tables, self._symbolize, ctx)

    def _cgroup_labels(self, ids: Iterable[int]) -> Mapping[int, str]:
        """Each cgroup id's path (CgroupPaths); "id:<id>" for all when the hierarchy
        cannot be read (logged once), so the figures stay, unnamed."""
        wanted = list(ids)
        with self._cgroup_lock:
            try:
                return self._cgroup_paths.labels(wanted)
            except OSError as exc:
                if not self._cgroup_walk_failed:
                    log.warning("cannot walk the cgroups, ids stay unnamed: %s", exc)
                self._cgroup_walk_failed = True
                return {i: f"id:{i}" for i in wanted}

    def expire_kernel_read(self) -> None:
        self._slow.expire()

    def _read_slow(self) -> _SlowRead:
        """The live-table walk (ages, and the allocations in the chunks created since
        tracing began), then the site records and the kernel stats of one moment
        (`_read_settled`), from which the breakdown and the chunk map are computed."""
        loaded = self._live()
        fold: AgeFold[int] = AgeFold(
            time.clock_gettime_ns(time.CLOCK_BOOTTIME), per_second=1e9, min_age=self._min_age
        )
        walked = True
        bases, shift, _ = read_traced_chunks(loaded.maps)
        in_chunks: list[tuple[int, int, int]] = []
        try:
            fold.add(self._walk(loaded, set(bases), shift, in_chunks))
        except OSError as exc:  # no batch lookup (before 5.6): no ages, the rest goes on
            walked = False
            if not self._walk_failed:
                log.warning("cannot walk the live table, no ages: %s", exc)
            self._walk_failed = True
        tables, slots, ks, unsettled = self._read_settled(loaded)
        if ks is not None and self._host is not None:
            # Outside the bracket: listing the host's maps and walking the cgroups takes
            # its time, and the breakdown needs none of it.
            ks = self._host.add_owners(ks)
        stats = ks.percpu_stats if ks is not None else None
        units = nr_units(stats, self.possible_cpus)
        names = {slot: site_key(key, self._symbolize) for slot, key in slots.items()}
        parts = breakdown_of(tables, ks, units, loaded.percpu_bytes_per_cpu)
        if parts is not None and unsettled:
            # A broken bound then need not be the arithmetic's: the kernel moved.
            note = " (percpu events came in during the read)"
            violations = tuple(v + note for v in parts.violations)
            parts = replace(parts, violations=violations, settled=False)
        ages = fold.ages(nr_units=units, site_of=names.get) if walked else None
        chunks = None
        if walked:
            chunks = traced_chunk_map(
                bases, shift, in_chunks, stats, page_size=PAGE_SIZE, dropped=tables.dropped
            )
        return _SlowRead(ks, units, ages, parts, tables, chunks)

    def _walk(
        self, loaded: LoadedSet, bases: set[int], shift: int, in_chunks: list[tuple[int, int, int]]
    ) -> Iterator[tuple[int, int, int]]:
        """(slot, size, alloc_ns) of every live entry, for the ages; the entries (ptr, off,
        size) in a chunk of ``bases`` go to ``in_chunks`` on the way."""
        for ptr, alloc_ns, size, _ext, slot, off in read_live_records(
            loaded.maps["pcpu_live"], self.live_capacity
        ):
            if bases and (ptr - off + shift) & _U64 in bases:
                in_chunks.append((ptr, off, size))
            yield slot, size, alloc_ns

    def _read_settled(
        self, loaded: LoadedSet
    ) -> tuple[Tables, dict[int, SiteAddressKey], KernelStats | None, int]:
        """The site records and the kernel stats of one moment: the records are read before
        and after the kernel stats, and the read is taken when no percpu event came in
        between (the programs' own counts say). Else it is tried once more, if the kernel
        stats were quick to read (a second read of a large percpu_stats would hold the
        allocator's lock as long again). Also how many events came in during the last
        try (0: settled)."""
        maps, cpus, sites = loaded.maps, self.possible_cpus, self.site_capacity
        tables, slots = read_tables_and_slots(maps, cpus, sites)
        moved = 0
        for _ in range(SETTLE_ATTEMPTS):
            first = percpu_events(tables)
            began = time.monotonic()
            ks = self._read_kernel_stats()
            took = time.monotonic() - began
            tables, slots = read_tables_and_slots(maps, cpus, sites)
            moved = percpu_events(tables) - first
            if not moved or took > SETTLE_RETRY_UNDER:
                break
        return tables, slots, ks, moved

    def _program_stats(self, loaded: LoadedSet) -> dict[str, ProgramStats]:
        # run_cnt and run_time_ns only move while bpf_stats are on; then they mean nothing.
        stats_on = syscalls.bpf_stats_enabled()
        out = {}
        for function in PROGRAMS.values():
            info = syscalls.prog_info(loaded.programs[function])
            out[function] = ProgramStats(
                runs=info.run_cnt if stats_on else None,
                run_time_ns=info.run_time_ns if stats_on else None,
                recursion_misses=info.recursion_misses,
            )
        return out

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every fd once no read is under way; idempotent. An unpinned set detaches;
        a pinned one stays. A read stuck for ``timeout`` seconds leaves the fds to the
        process's exit (logged)."""
        if not self._reading.acquire(timeout=timeout):
            log.warning("a map read is still under way after %g s: not closing its fds", timeout)
            return
        try:
            loaded, self._set = self._set, None
        finally:
            self._reading.release()
        if loaded is not None:
            loaded.close()


# Reads of the kernel stats one throttled read may make while percpu events come in
# between, and how quick a read must have been to be tried again: reading percpu_stats
# holds the allocator's lock, about 1 ms at 2,000 live allocations, 0.1-0.5 s at 262,144.
SETTLE_ATTEMPTS = 2
SETTLE_RETRY_UNDER = 0.05
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class _SlowRead:
    """What the throttled read gives: the kernel stats, the units they imply, the ages
    and the breakdown, all of one moment."""

    kernel_stats: KernelStats | None
    nr_units: int
    ages: LiveAges | None
    breakdown: Breakdown | None
    tables: Tables  # the site records and counters read with the kernel stats
    chunk_map: ChunkMap | None  # None when the live table could not be walked


def _adopt(pin_dir: Path, layout: bytes, capacities: Capacities) -> LoadedSet | None:
    """The compatible set pinned at ``pin_dir``, or None after saying why it is replaced."""
    for leftover in pins.leftovers(pin_dir):
        log.warning("removing %s, left by an interrupted start", leftover)
        pins.remove_tree(leftover)
    if not pins.current(pin_dir).exists():
        log.info("no pinned set in %s: loading a new one", pin_dir)
        return None
    try:
        loaded = pins.open_pinned(pin_dir, layout, capacities)
    except pins.IncompatibleSet as exc:
        log.warning("replacing the pinned set in %s: %s; tracking starts again", pin_dir, exc)
        return None
    since = datetime.fromtimestamp(loaded.started_ns / 1e9).astimezone()
    log.info(
        "adopted the pinned set in %s: counting since %s", pin_dir, since.isoformat("T", "seconds")
    )
    return loaded


def check_capacity(what: str, value: int) -> None:
    """BackendUnavailable unless a kernel hash map can hold ``value`` entries."""
    if not 1 <= value <= MAX_TABLE_CAPACITY:
        raise BackendUnavailable(
            f"{what} must be between 1 and {MAX_TABLE_CAPACITY} (the most entries the kernel "
            f"gives a hash map), got {value}"
        )


def check_limit(what: str, value: int) -> None:
    """BackendUnavailable unless ``value`` is a usable number of series (at least 1)."""
    if value < 1:
        raise BackendUnavailable(f"{what} must be at least 1, got {value}")


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


def _unified_root() -> Path | None:
    try:
        return unified_root()
    except OSError:
        return None


def _default_kernel_stats() -> Callable[[], KernelStats]:
    from pcpu_bpf.kernel.reader import read_kernel_stats

    return read_kernel_stats
