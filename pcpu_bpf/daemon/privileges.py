"""Dropping the capabilities a running daemon does not use.

Loading and attaching needs CAP_BPF and CAP_PERFMON (the loader process does it), kallsyms
needs CAP_SYSLOG and tracefs and debugfs need CAP_DAC_READ_SEARCH for a user that is not
root; all of that happens at start. Afterwards the daemon reads its maps and programs
through fds it holds and percpu_stats through an fd opened at start, which on Linux 6.5
and later needs no capability at all. So once the set is attached (or adopted) and one
snapshot has been taken, `drop_capabilities` keeps only what a probe shows is still
needed (nothing, on such kernels), from every set: effective, permitted, inheritable,
ambient and, when it may, the bounding set, and sets no_new_privs, so nothing can be
regained, not by an execve either. Capabilities are per thread: it must run while the
process has one thread, before the HTTP server starts its own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pcpu_bpf.errors import PcpuError

log = logging.getLogger(__name__)

_CAPABILITY_VERSION_3 = 0x20080522  # include/uapi/linux/capability.h
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAP_SETPCAP = 8
# Names of the capabilities this project speaks of (include/uapi/linux/capability.h).
NAMES = {
    1: "CAP_DAC_OVERRIDE",
    2: "CAP_DAC_READ_SEARCH",
    8: "CAP_SETPCAP",
    21: "CAP_SYS_ADMIN",
    34: "CAP_SYSLOG",
    38: "CAP_PERFMON",
    39: "CAP_BPF",
}
# Tried first when something must be kept: what reading BPF objects and kernel files
# needed on older kernels (bpf(2) refused everything without CAP_BPF, or CAP_SYS_ADMIN
# before 5.8, while kernel.unprivileged_bpf_disabled was set).
_LIKELY = (39, 21, 38, 2, 34, 1)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class CapSets:
    """One thread's effective, permitted and inheritable sets, as bit masks."""

    effective: int
    permitted: int
    inheritable: int = 0


def capget() -> CapSets:
    """The calling thread's capability sets."""
    header, data = _Header(_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return CapSets(
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(sets: CapSets) -> None:
    """Set the calling thread's capability sets (only ever lowering permitted)."""
    header, data = _Header(_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    for i in (0, 1):
        data[i].effective = (sets.effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (sets.permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (sets.inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def bits(mask: int) -> list[int]:
    """The capability numbers set in ``mask``."""
    return [cap for cap in range(64) if mask >> cap & 1]


def name(cap: int) -> str:
    return NAMES.get(cap, f"capability {cap}")


def names(caps: Iterable[int]) -> str:
    return ", ".join(name(c) for c in caps) or "none"


def status_sets(pid: int | str = "self") -> dict[str, dict[str, int]]:
    """Cap* lines of every thread of ``pid`` (/proc/PID/task/TID/status): tid -> set -> mask."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        out[task.name] = {
            line[:6]: int(line.split()[1], 16) for line in text.splitlines() if line[:3] == "Cap"
        }
    return out


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63


def needed(permitted: int, probe: Callable[[], bool]) -> int:
    """The smallest set found, within ``permitted``, under which ``probe`` still succeeds
    (tried as the effective set; permitted stays, so each try can be undone)."""

    def works(effective: int) -> bool:
        capset(CapSets(effective, permitted))
        return probe()

    if works(0):
        return 0
    if not works(permitted):
        raise PcpuError("the daemon does not work even with every capability it started with")
    keep = permitted
    order = [c for c in _LIKELY if permitted >> c & 1] + bits(permitted)
    for cap in reversed(list(dict.fromkeys(order))):  # the least likely go first
        if works(keep & ~(1 << cap)):
            keep &= ~(1 << cap)
    return keep


def drop_capabilities(probe: Callable[[], bool]) -> int:
    """Keep only the capabilities ``probe`` needs (usually none), in every set, for good;
    the mask kept. ``probe`` must do what the daemon does from now on and say if it
    worked."""
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise PcpuError("capabilities are per thread: drop them before starting threads")
    libc = _libc()
    before = capget()
    if before.permitted == 0:
        return 0
    try:
        keep = needed(before.permitted, probe)
    except BaseException:
        capset(before)  # as it was: an error above decides what happens next
        raise
    capset(CapSets(before.permitted, before.permitted))  # CAP_SETPCAP, if held, for below
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient")
    if before.permitted >> CAP_SETPCAP & 1:
        for cap in range(_last_cap() + 1):
            if not keep >> cap & 1:
                _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping {name(cap)}")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    capset(CapSets(keep, keep))
    dropped = bits(before.permitted & ~keep)
    log.info(
        "running with %s; dropped %s (not needed once attached)",
        f"capabilities {names(bits(keep))}" if keep else "no capabilities",
        names(dropped) if len(dropped) <= len(NAMES) else f"all {len(dropped)} it held",
    )
    return keep
