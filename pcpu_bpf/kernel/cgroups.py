"""What the cgroup filesystem says about percpu memory, and cgroup v2 ids as paths.

- Where cgroup v2 (the unified hierarchy) is mounted: /sys/fs/cgroup on a unified host,
  /sys/fs/cgroup/unified on a hybrid one (found in /proc/self/mountinfo).
- A cgroup's v2 id (what the BPF helper bpf_get_current_cgroup_id returns, the kernfs
  node id) is, on 64-bit kernels, the inode number of its directory: `CgroupPaths` maps
  ids to paths by walking the hierarchy, and keeps the last path of a removed cgroup,
  marked " (deleted)".
- Dying cgroups (removed, still pinned, e.g. by page cache charged to a memory cgroup):
  cgroup v2's cgroup.stat nr_dying_descendants of the root, and on hosts with the v1
  memory controller, /proc/cgroups' count of memory cgroups minus the directories.
- Each v2 cgroup's ``percpu`` line of memory.stat: percpu bytes charged to it and its
  descendants; `memory_percpu_bytes` turns that into each cgroup's own share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pcpu_bpf.errors import StatsParseError

DELETED = " (deleted)"
UNIFIED = "unified"  # the hierarchy label of cgroup v2
ROOT_PATH = "/"


def _mounts(mountinfo: str | Path) -> Iterator[tuple[str, str, list[str]]]:
    """(mount point, filesystem type, super options) of every mount."""
    for line in Path(mountinfo).read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3:
            point = fields[4].replace("\\040", " ")
            yield point, tail[0], tail[2].split(",")


STANDARD_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def unified_root(mountinfo: str | Path = "/proc/self/mountinfo") -> Path | None:
    """Where cgroup v2 is mounted: at a standard place (/sys/fs/cgroup, or on a hybrid
    host /sys/fs/cgroup/unified) if it is there, else the first cgroup2 mount; or None."""
    points = [p for p, fs, _ in _mounts(mountinfo) if fs == "cgroup2"]
    standard = [p for p in points if p in STANDARD_ROOTS]
    chosen = standard or points
    return Path(chosen[0]) if chosen else None


def v1_root(controller: str, mountinfo: str | Path = "/proc/self/mountinfo") -> Path | None:
    """Where the v1 hierarchy of ``controller`` is mounted, or None."""
    for point, fs, options in _mounts(mountinfo):
        if fs == "cgroup" and controller in options:
            return Path(point)
    return None


def walk(root: Path) -> Iterator[tuple[str, int, Path]]:
    """(path relative to the root, as "/a/b"; inode number; directory) of every cgroup.

    Directories removed while the walk runs are skipped.
    """
    stack: list[tuple[str, Path]] = [(ROOT_PATH, root)]
    while stack:
        rel, directory = stack.pop()
        try:
            yield rel, directory.stat().st_ino, directory
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                child = f"{rel.rstrip('/')}/{entry.name}"
                stack.append((child, Path(entry.path)))


def _keyed(text: str, key: str, where: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                break
    raise StatsParseError(f"{where}: no {key} line")


def dying_descendants(root: Path) -> int:
    """nr_dying_descendants of the v2 root's cgroup.stat."""
    path = root / "cgroup.stat"
    return _keyed(path.read_text(), "nr_dying_descendants", str(path))


def v1_dying(controller: str, root: Path, proc_cgroups: str | Path = "/proc/cgroups") -> int:
    """Dying cgroups of a v1 controller: the kernel's count minus the directories.

    /proc/cgroups' num_cgroups counts a cgroup until it is freed, a directory only until
    it is removed. A cgroup made or removed during the walk can put it one off.
    """
    for line in Path(proc_cgroups).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == controller:
            return max(0, int(fields[2]) - sum(1 for _ in walk(root)))
    raise StatsParseError(f"{proc_cgroups}: no {controller} line")


def memory_percpu_bytes(root: Path) -> dict[str, int] | None:
    """Per v2 cgroup, the percpu bytes charged to it alone: memory.stat's ``percpu`` (the
    cgroup and its descendants) minus its children's; dying children's charges stay with
    the parent. None where no cgroup has memory.stat (the memory controller is off)."""
    charged: dict[str, int] = {}
    for rel, _, directory in walk(root):
        try:
            text = (directory / "memory.stat").read_text()
        except (FileNotFoundError, NotADirectoryError):
            continue
        charged[rel] = _keyed(text, "percpu", str(directory / "memory.stat"))
    if not charged:
        return None
    own = dict(charged)
    for rel, value in charged.items():
        if rel == ROOT_PATH:
            continue
        parent = rel.rsplit("/", 1)[0] or ROOT_PATH
        if parent in own:
            own[parent] -= value
    return own


@dataclass(slots=True)
class _Known:
    path: str
    deleted: bool = False


class CgroupPaths:
    """cgroup v2 id -> path, from walks of the hierarchy.

    ``labels`` walks the hierarchy when it meets an id it does not know, never more often
    than once per ``min_interval``; an id it knows is checked with one stat of its path
    (gone, or another cgroup of the same name: removed). A removed cgroup keeps its last
    path with " (deleted)" for as long as it is asked about; an id no walk ever saw reads
    "id:<id>". Memory is bounded by what is asked: removed cgroups no longer asked about
    are forgotten.
    """

    def __init__(
        self,
        root: Path | None,
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.min_interval = min_interval
        self._clock = clock
        self._known: dict[int, _Known] = {}
        self._walked_at: float | None = None
        self.walks = 0

    def _walk(self) -> None:
        if self.root is None:
            return
        seen = {ino: rel for rel, ino, _ in walk(self.root)}
        for cgroup_id, known in self._known.items():
            if cgroup_id not in seen:
                known.deleted = True
        for cgroup_id, rel in seen.items():
            self._known[cgroup_id] = _Known(rel)
        self._walked_at = self._clock()
        self.walks += 1

    def _alive(self, cgroup_id: int, known: _Known) -> bool:
        assert self.root is not None  # something is known only after a walk
        try:
            return (self.root / known.path.lstrip("/")).stat().st_ino == cgroup_id
        except (FileNotFoundError, NotADirectoryError):
            return False

    def labels(self, ids: Iterable[int]) -> dict[int, str]:
        """Each id's label: its path, its last path + " (deleted)", or "id:<id>"."""
        wanted = set(ids)
        unknown = any(i not in self._known for i in wanted)
        if unknown and (
            self._walked_at is None or self._clock() - self._walked_at >= self.min_interval
        ):
            self._walk()
        for cgroup_id in wanted:
            known = self._known.get(cgroup_id)
            if known is not None and not known.deleted and not self._alive(cgroup_id, known):
                known.deleted = True
        for cgroup_id in [i for i, k in self._known.items() if k.deleted and i not in wanted]:
            del self._known[cgroup_id]
        return {i: self._label(i) for i in wanted}

    def _label(self, cgroup_id: int) -> str:
        known = self._known.get(cgroup_id)
        if known is None:
            return cgroup_label(cgroup_id, None)
        return cgroup_label(cgroup_id, known.path, deleted=known.deleted)


def cgroup_label(cgroup_id: int, path: str | None, *, deleted: bool = False) -> str:
    """How a cgroup is named in the figures: its path, " (deleted)" appended once it is
    removed, or "id:<id>" when its path was never known."""
    if path is None:
        return f"id:{cgroup_id}"
    return path + DELETED if deleted else path
