"""`pcpu-bpf doctor`: can the bpf backend run here, and if not, what exactly to fix.

Each check returns one verdict: ``ok``, ``warn`` (runs, with less data) or ``FAIL`` (the
bpf backend cannot run), with the fix. Every path is a parameter so tests run the checks
on fake trees without root.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType

from pcpu_bpf.bpf import pins
from pcpu_bpf.bpf.loader import HEADERS_FIX, kernel_headers
from pcpu_bpf.bpf.syscalls import bpf_stats_enabled
from pcpu_bpf.bpf.tracefs import TRACEFS_CANDIDATES, find_tracefs, read_layout
from pcpu_bpf.errors import BackendUnavailable, PcpuError, StatsParseError
from pcpu_bpf.kernel import cgroups

OK, WARN, FAIL = "ok", "warn", "FAIL"

# include/uapi/linux/capability.h
CAP_SYS_ADMIN, CAP_SYSLOG, CAP_PERFMON, CAP_BPF = 21, 34, 38, 39
# Measured on 6.18 (systemd/README.md): DAC_READ_SEARCH reads the root-only tracefs and
# debugfs directories, SYSLOG shows kallsyms addresses.
CAPS_FIX = (
    "run as root, or grant CAP_BPF CAP_PERFMON CAP_SYSLOG CAP_DAC_READ_SEARCH "
    "(systemd: AmbientCapabilities=)"
)


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict, what was found, and the fix when it is not ok."""

    name: str
    verdict: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The one-line report: verdict, name, finding, fix."""
        fix = f"; fix: {self.fix}" if self.fix and self.verdict != OK else ""
        return f"{self.verdict:<4}  {self.name}: {self.detail}{fix}"


@dataclass(frozen=True, slots=True)
class Paths:
    """Where the checks look; the defaults are the live system's."""

    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    modules_root: Path = Path("/lib/modules")
    debugfs_root: Path = Path("/sys/kernel/debug")
    tracefs_candidates: tuple[Path, ...] = field(
        default_factory=lambda: tuple(Path(p) for p in TRACEFS_CANDIDATES)
    )


_KALLSYMS_ADDRESS = re.compile(r"[0-9a-fA-F]{1,16}")
# /proc/PID/status prints a capability mask as 16 hex digits.
_CAP_MASK = re.compile(r"[0-9a-fA-F]{1,16}")


def parse_cap_eff(status_text: str) -> int:
    """The effective capability mask from /proc/<pid>/status (0 when absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            value = line.split(":", 1)[1].strip()
            if not _CAP_MASK.fullmatch(value):
                raise StatsParseError(f"/proc status: malformed CapEff line: {line[:80]!r}")
            return int(value, 16)
    return 0


def own_cap_eff(paths: Paths) -> int:
    """This process's effective capabilities, from /proc/self/status."""
    return parse_cap_eff((paths.proc_root / "self/status").read_text(errors="replace"))


def check_privileges(paths: Paths) -> Check:
    """Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN before 5.8); CAP_SYSLOG for names."""
    name = "privileges"
    try:
        caps = own_cap_eff(paths)
    except (OSError, StatsParseError) as exc:
        return Check(name, FAIL, f"cannot read {paths.proc_root}/self/status: {exc}", CAPS_FIX)

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    who = f"euid {os.geteuid()}, CapEff={caps:016x}"
    if not (has(CAP_BPF) and has(CAP_PERFMON)) and not has(CAP_SYS_ADMIN):
        return Check(name, FAIL, f"{who}: lacks CAP_BPF and CAP_PERFMON", CAPS_FIX)
    if not has(CAP_SYSLOG):
        return Check(name, WARN, f"{who}: no CAP_SYSLOG, call sites will be hex", CAPS_FIX)
    return Check(name, OK, who)


def check_bpf_map_owners(paths: Paths) -> Check:
    """CAP_SYS_ADMIN: listing every BPF map on the host (pcpu_bpf_map_percpu_bytes)."""
    name = "BPF map owners"
    try:
        caps = own_cap_eff(paths)
    except (OSError, StatsParseError) as exc:
        return Check(name, WARN, f"cannot read {paths.proc_root}/self/status: {exc}")
    if caps >> CAP_SYS_ADMIN & 1:
        return Check(name, OK, "CAP_SYS_ADMIN: every BPF map on the host is listed")
    return Check(
        name,
        WARN,
        "no CAP_SYS_ADMIN: no pcpu_bpf_map_percpu_bytes (listing other tools' maps needs it)",
        "run as root, or add CAP_SYS_ADMIN (systemd/README.md, BPF maps as owners)",
    )


def check_cgroups(paths: Paths) -> Check:
    """cgroup v2 mounted (cgroup figures), and whether its memory controller is on."""
    name = "cgroups"
    try:
        root = cgroups.unified_root(paths.proc_root / "self/mountinfo")
        memory_v1 = cgroups.v1_root("memory", paths.proc_root / "self/mountinfo")
    except OSError as exc:
        return Check(name, WARN, f"cannot read {paths.proc_root}/self/mountinfo: {exc}")
    v1 = f"; v1 memory controller at {memory_v1}" if memory_v1 is not None else ""
    if root is None:
        return Check(
            name,
            WARN,
            f"no cgroup v2 mounted: no per-cgroup figures{v1}",
            "mount -t cgroup2 none /sys/fs/cgroup/unified",
        )
    try:
        controllers = (root / "cgroup.subtree_control").read_text().split()
    except OSError:
        controllers = []
    memory = "on" if "memory" in controllers else "off (no memory.stat percpu)"
    return Check(name, OK, f"cgroup v2 at {root}, memory controller {memory}{v1}")


def check_tracefs(paths: Paths) -> Check:
    """tracefs mounted and readable (the tracepoint format files live there)."""
    try:
        root = find_tracefs(paths.tracefs_candidates)
    except BackendUnavailable as exc:
        return Check("tracefs", FAIL, str(exc))  # the message names the fix
    if not os.access(root / "events", os.R_OK | os.X_OK):
        return Check("tracefs", FAIL, f"{root} is not readable", CAPS_FIX)
    return Check("tracefs", OK, f"mounted at {root}")


def check_debugfs(paths: Paths) -> Check:
    """debugfs mounted and readable (percpu_stats lives there; tracing does not need it)."""
    root = paths.debugfs_root
    try:
        mounted = any(root.iterdir())
    except PermissionError:
        return Check("debugfs", WARN, f"{root} is not readable: no pcpu_stats_* metrics", CAPS_FIX)
    except OSError:
        mounted = False
    if mounted:
        return Check("debugfs", OK, f"mounted at {root}")
    return Check(
        "debugfs",
        WARN,
        f"not mounted at {root}: no pcpu_stats_* metrics",
        f"mount -t debugfs nodev {root}",
    )


def check_tracepoints(paths: Paths) -> Check:
    """The five percpu tracepoints, the fields the programs need, and the optional ones."""
    name = "tracepoints"
    try:
        root = find_tracefs(paths.tracefs_candidates)
    except BackendUnavailable as exc:
        return Check(name, FAIL, f"unknown: {exc}")
    try:
        layout = read_layout(root)
        layout.check_required()
    except BackendUnavailable as exc:
        return Check(name, FAIL, str(exc), "a kernel with the percpu tracepoints (>= 4.14)")
    missing = layout.missing_optional()
    if missing:
        fields = ", ".join(f"{ev}.{f}" for ev, f in missing)
        return Check(
            name,
            WARN,
            f"5 present; missing optional fields {fields} (call sites 'unknown', "
            "bytes = size x possible CPUs)",
            "Linux >= 5.19 has them",
        )
    return Check(name, OK, "5 present with every field (call_site, bytes_alloc, gfp_flags)")


def check_bcc(import_bcc: Callable[[], ModuleType]) -> Check:
    """bcc importable from this Python, and from where."""
    try:
        bcc = import_bcc()
    except ImportError as exc:
        return Check(
            "bcc",
            FAIL,
            f"not importable from {sys.executable} ({exc})",
            "apt install python3-bpfcc; make the venv with --system-site-packages",
        )
    version = getattr(bcc, "__version__", "?")
    return Check("bcc", OK, f"{version} from {bcc.__file__} (Python {sys.executable})")


def check_headers(paths: Paths, release: str) -> Check:
    """Kernel headers where bcc looks for them: /lib/modules/<release>/build."""
    build = paths.modules_root / release / "build"
    found = kernel_headers(release, paths.modules_root)
    if found is None:
        return Check("kernel headers", FAIL, f"{build} missing", HEADERS_FIX)
    return Check("kernel headers", OK, f"{build} -> {found}")


def check_kallsyms(paths: Paths) -> Check:
    """Addresses visible in kallsyms (kptr_restrict / CAP_SYSLOG), so call sites get names."""
    path = paths.proc_root / "kallsyms"
    try:
        with path.open(errors="replace") as f:
            head = [line.split(maxsplit=1)[0] for _, line in zip(range(64), f, strict=False)]
    except OSError as exc:
        return Check("kallsyms", WARN, f"cannot read {path}: {exc}", "run as root")
    except IndexError:  # a blank line
        head = ["?"]
    if any(not _KALLSYMS_ADDRESS.fullmatch(a) for a in head):
        return Check("kallsyms", WARN, f"{path} is not a kallsyms listing", "run on a real /proc")
    if not head:
        return Check(
            "kallsyms",
            WARN,
            f"{path} is empty (hidden, e.g. by systemd's ProtectKernelTunables=): call sites "
            "will be hex",
            "do not hide /proc/kallsyms",
        )
    if all(int(a, 16) == 0 for a in head):
        return Check(
            "kallsyms",
            WARN,
            "addresses hidden: call sites will be hex",
            "grant CAP_SYSLOG (or sysctl kernel.kptr_restrict=0)",
        )
    return Check("kallsyms", OK, "addresses visible")


def check_bpf_stats(paths: Paths) -> Check:
    """kernel.bpf_stats_enabled: per-program run time is reported only when it is on."""
    if bpf_stats_enabled(paths.proc_root / "sys/kernel/bpf_stats_enabled"):
        return Check("bpf_stats", OK, "enabled: program run counts and run time reported")
    return Check(
        "bpf_stats",
        WARN,
        "disabled: no program run counts or run time",
        "sysctl -w kernel.bpf_stats_enabled=1 (costs a few ns per event)",
    )


def check_percpu_stats(paths: Paths) -> Check:
    """debugfs percpu_stats readable (CONFIG_PERCPU_STATS): the kernel's own counters."""
    path = paths.debugfs_root / "percpu_stats"
    try:
        with path.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        return Check(
            "percpu_stats",
            WARN,
            f"{path} missing (CONFIG_PERCPU_STATS off or debugfs not mounted): "
            "no pcpu_stats_* metrics",
            "mount debugfs; a kernel with CONFIG_PERCPU_STATS=y",
        )
    except OSError as exc:
        return Check(
            "percpu_stats",
            WARN,
            f"{path} unreadable ({exc.strerror}): no pcpu_stats_* metrics",
            CAPS_FIX,
        )
    return Check("percpu_stats", OK, f"{path} readable")


def _age(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


def check_pinned(pin_dir: Path, why_incompatible: Callable[[], str | None]) -> Check:
    """What `pcpu-bpf serve` left pinned at ``pin_dir``, its age, and whether it fits."""
    name = "pinned set"
    extra = pins.leftovers(pin_dir)
    leftover = (
        f"; leftovers of an interrupted start: {', '.join(str(p) for p in extra)}" if extra else ""
    )
    fix = "sudo pcpu-bpf detach (removes it all)"
    state = pins.pinned_state(pin_dir)
    if state is None:
        verdict = WARN if extra else OK
        return Check(name, verdict, f"nothing at {pin_dir}{leftover}", fix)
    what = (
        f"{pin_dir}: {state.count('prog_')} programs, {state.count('link_')} links, "
        f"{state.count('map_')} maps"
    )
    if state.meta is not None:
        since = datetime.fromtimestamp(state.meta.started_ns / 1e9).astimezone()
        what += (
            f", counting since {since.isoformat('T', 'seconds')} "
            f"(age {_age(state.meta.age_seconds)}), "
            f"{state.meta.percpu_bytes_per_cpu} percpu bytes per CPU"
        )
    why = why_incompatible()
    if why is None:
        return Check(
            name, WARN if extra else OK, f"{what}; compatible: adopted on start{leftover}", fix
        )
    return Check(name, WARN, f"{what}; not compatible ({why}): replaced on start{leftover}", fix)


def check_load(start: Callable[[], object]) -> Check:
    """The proof: compile, load and attach the programs, then detach."""
    try:
        backend = start()
    except PcpuError as exc:
        return Check("load", FAIL, str(exc), "see the failures above")
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    return Check("load", OK, "programs compiled, loaded and attached (then detached)")


def run_checks(
    paths: Paths,
    *,
    release: str | None = None,
    import_bcc: Callable[[], ModuleType] = lambda: importlib.import_module("bcc"),
    start_backend: Callable[[], object] | None = None,
    pinned: Check | None = None,
) -> list[Check]:
    """Every check in order; the load check only when nothing before it failed."""
    checks = [
        check_privileges(paths),
        check_tracefs(paths),
        check_debugfs(paths),
        check_tracepoints(paths),
        check_bcc(import_bcc),
        check_headers(paths, release or os.uname().release),
        check_kallsyms(paths),
        check_bpf_stats(paths),
        check_percpu_stats(paths),
        check_bpf_map_owners(paths),
        check_cgroups(paths),
    ]
    if pinned is not None:
        checks.append(pinned)
    if start_backend is not None and not any(c.verdict == FAIL for c in checks):
        checks.append(check_load(start_backend))
    return checks


def can_run(checks: list[Check]) -> bool:
    """True when no check failed: the bpf backend can run."""
    return all(c.verdict != FAIL for c in checks)
