"""Pinned sets in bpffs: the maps, programs and links that outlive the daemon.

The pin directory (``/sys/fs/bpf/pcpu-bpf``) is a container the daemon may write in
(systemd: ReadWritePaths=); the set lives in its ``current`` directory:
``map_<name>``, ``prog_<function>``, ``link_<tracepoint>``, and ``map_pcpu_meta``, the
layout record (a digest of the sources and defines, when tracking began, the set's
percpu bytes). The loader pins a new set into ``staging_<pid>`` beside it and renames
it into place (bpffs renames directories atomically), so a crash never leaves a half
set under the real name; a staging or old directory left by a crash is listed and
removed like a set. Unpinning a link detaches its program once no process holds it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.maps import BPF_MAPS, META_FORMAT, META_MAP, PROGRAMS, Capacities, map_mismatch
from pcpu_bpf.errors import BackendUnavailable, PcpuError, ProgramLoadError

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/pcpu-bpf")
BPFFS_FIX = "mount -t bpf bpf /sys/fs/bpf"
_LEFTOVER_TAGS = ("staging", "old")
BPF_FS_MAGIC = 0xCAFE4A11  # include/uapi/linux/magic.h
_STATFS_SIZE = 256  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first


def _fs_type(path: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(struct.unpack_from("L", buf)[0]) & 0xFFFFFFFF


def check_pin_dir(pin_dir: Path) -> None:
    """BackendUnavailable unless ``pin_dir`` is (or would be) a directory inside a bpffs,
    not its root: everything the daemon pins, and everything detach and a start's
    clean-up remove, is in there, so no other directory is ever written to or emptied."""
    where = pin_dir if pin_dir.exists() else pin_dir.parent
    try:
        on_bpffs = _fs_type(where) == BPF_FS_MAGIC
    except OSError as exc:
        raise BackendUnavailable(f"pin directory {pin_dir}: {exc.strerror}") from None
    if not on_bpffs:
        raise BackendUnavailable(
            f"pin directory {pin_dir} is not on a bpf file system ({BPFFS_FIX}; the "
            f"default is {DEFAULT_PIN_DIR})"
        )
    if pin_dir.exists() and (not pin_dir.is_dir() or os.path.ismount(pin_dir)):
        raise BackendUnavailable(
            f"pin directory {pin_dir} must be a directory of its own inside a bpffs, "
            f"not the mount itself (the default is {DEFAULT_PIN_DIR})"
        )


@dataclass(slots=True)
class LoadedSet:
    """Fds of one set: maps by name, programs by function, links by tracepoint."""

    maps: dict[str, int]
    programs: dict[str, int]
    links: dict[str, int] = field(default_factory=dict)
    layout: bytes = b""
    started_ns: int = 0  # CLOCK_REALTIME ns tracking began
    percpu_bytes_per_cpu: int = 0
    pin_dir: str | None = None

    def fds(self) -> list[int]:
        return [*self.maps.values(), *self.programs.values(), *self.links.values()]

    def close(self) -> None:
        """Close every fd; an unpinned set detaches and is freed."""
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.maps.clear()
        self.programs.clear()
        self.links.clear()


class IncompatibleSet(PcpuError):
    """A pinned set that cannot be adopted; the message says why."""


def map_pin(name: str) -> str:
    return f"map_{name}"


def prog_pin(function: str) -> str:
    return f"prog_{function}"


def link_pin(tracepoint: str) -> str:
    return f"link_{tracepoint}"


CURRENT = "current"


def current(pin_dir: Path) -> Path:
    """Where the set in use is pinned."""
    return pin_dir / CURRENT


def _sibling(pin_dir: Path, tag: str) -> Path:
    # bpffs refuses names with a dot (bpf_lookup reserves them).
    return pin_dir / f"{tag}_{os.getpid()}"


def leftovers(pin_dir: Path) -> list[Path]:
    """Staging and old directories in ``pin_dir`` that a crashed process left behind."""
    try:
        entries = list(pin_dir.iterdir())
    except OSError:
        return []
    prefixes = tuple(f"{tag}_" for tag in _LEFTOVER_TAGS)
    return sorted(p for p in entries if p.name.startswith(prefixes) and p.is_dir())


def remove_tree(path: Path) -> list[str]:
    """Unpin everything in ``path`` and remove it; the names removed."""
    removed = []
    for entry in sorted(path.iterdir()):
        entry.unlink()
        removed.append(entry.name)
    path.rmdir()
    return removed


def pin_set(
    pin_dir: Path, maps: Mapping[str, int], programs: Mapping[str, int], links: Mapping[str, int]
) -> None:
    """Pin a set in ``pin_dir``, replacing what is there, never showing a half set."""
    staging = _sibling(pin_dir, "staging")
    target = current(pin_dir)
    try:
        pin_dir.mkdir(mode=0o700, exist_ok=True)
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise ProgramLoadError(
            f"cannot create {staging}: {exc.strerror} (is bpffs mounted? {BPFFS_FIX})"
        ) from None
    try:
        for name, fd in maps.items():
            syscalls.obj_pin(fd, staging / map_pin(name))
        for function, fd in programs.items():
            syscalls.obj_pin(fd, staging / prog_pin(function))
        for tracepoint, fd in links.items():
            syscalls.obj_pin(fd, staging / link_pin(tracepoint))
        old = None
        if target.exists():
            old = _sibling(pin_dir, "old")
            os.rename(target, old)
        os.rename(staging, target)
    except OSError as exc:
        remove_tree(staging)
        hint = f" (is {pin_dir.parent} a bpffs? {BPFFS_FIX})" if exc.errno == errno.EPERM else ""
        raise ProgramLoadError(f"pinning the set in {pin_dir} failed: {exc}{hint}") from None
    if old is not None:
        remove_tree(old)


@dataclass(frozen=True, slots=True)
class Meta:
    """The layout record of a set."""

    layout: bytes
    started_ns: int
    percpu_bytes_per_cpu: int

    @property
    def age_seconds(self) -> float:
        return max(time.time_ns() - self.started_ns, 0) / 1e9


def read_meta(fd: int) -> Meta:
    """The layout record a set's meta map holds."""
    size = struct.calcsize(META_FORMAT)
    raw = syscalls.lookup_elem(fd, struct.pack("<I", 0), size)
    if raw is None:
        raise IncompatibleSet("the layout record is empty")
    layout, started, per_cpu = struct.unpack(META_FORMAT, raw)
    return Meta(layout, started, per_cpu)


def _get(path: Path, opened: list[int]) -> int:
    try:
        fd = syscalls.obj_get(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise IncompatibleSet(f"{path.name} is missing") from None
        raise IncompatibleSet(f"{path.name} cannot be opened: {exc.strerror}") from None
    opened.append(fd)
    return fd


def open_pinned(pin_dir: Path, layout: bytes, capacities: Capacities) -> LoadedSet:
    """The set pinned at ``pin_dir``, if it is whole and laid out as ``layout`` says.

    IncompatibleSet says why not: a pin missing, a map of another type or size, another
    layout (another version of the programs, other capacities or another kernel).
    """
    opened: list[int] = []
    where = current(pin_dir)
    try:
        maps = {name: _get(where / map_pin(name), opened) for name in (*BPF_MAPS, META_MAP)}
        for name, fd in maps.items():
            why = map_mismatch(name, syscalls.map_info(fd), capacities)
            if why is not None:
                raise IncompatibleSet(why)
        meta = read_meta(maps[META_MAP])
        if meta.layout != layout:
            raise IncompatibleSet(
                "its layout record differs (another version of the programs, other "
                "capacities, or another kernel)"
            )
        programs = {fn: _get(where / prog_pin(fn), opened) for fn in PROGRAMS.values()}
        links = {tp: _get(where / link_pin(tp), opened) for tp in PROGRAMS}
        for tracepoint, function in PROGRAMS.items():
            prog = syscalls.prog_info(programs[function])
            if prog.name != function[:15]:
                raise IncompatibleSet(f"{prog_pin(function)} is program {prog.name!r}")
            if syscalls.link_info(links[tracepoint]).prog_id != prog.id:
                raise IncompatibleSet(f"{link_pin(tracepoint)} holds another program")
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return LoadedSet(
        maps=maps,
        programs=programs,
        links=links,
        layout=meta.layout,
        started_ns=meta.started_ns,
        percpu_bytes_per_cpu=meta.percpu_bytes_per_cpu,
        pin_dir=str(pin_dir),
    )


def remove_set(pin_dir: Path) -> dict[Path, list[str]]:
    """Unpin the set in ``pin_dir`` and every leftover beside it, then the directory:
    directory -> names removed. BackendUnavailable, removing nothing, when ``pin_dir``
    is not a pin directory in a bpffs."""
    if not pin_dir.exists():
        return {}
    check_pin_dir(pin_dir)
    out = {}
    for path in [current(pin_dir), *leftovers(pin_dir)]:
        if path.is_dir():
            out[path] = remove_tree(path)
    try:
        pin_dir.rmdir()
    except OSError:
        pass  # absent, or holding something not ours: left as it is
    return out


@dataclass(frozen=True, slots=True)
class PinnedState:
    """What a pin directory holds, for people: pin names and the layout record."""

    pins: tuple[str, ...]
    meta: Meta | None

    def count(self, prefix: str) -> int:
        return sum(name.startswith(prefix) for name in self.pins)


def pinned_state(pin_dir: Path) -> PinnedState | None:
    """The pins in ``pin_dir`` and its layout record (None where unreadable); None if absent."""
    try:
        names = tuple(sorted(p.name for p in current(pin_dir).iterdir()))
    except FileNotFoundError:
        return None
    meta = None
    try:
        fd = syscalls.obj_get(current(pin_dir) / map_pin(META_MAP))
    except OSError:
        return PinnedState(names, None)
    try:
        meta = read_meta(fd)
    except (OSError, IncompatibleSet):
        meta = None
    finally:
        os.close(fd)
    return PinnedState(names, meta)


def compatibility(pin_dir: Path, layout: bytes, capacities: Capacities) -> str | None:
    """Why the set at ``pin_dir`` would be replaced, or None when it would be adopted."""
    try:
        open_pinned(pin_dir, layout, capacities).close()
    except IncompatibleSet as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return None
