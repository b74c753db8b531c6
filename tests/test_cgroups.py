"""The cgroup filesystem's view: where the hierarchies are, v2 ids as paths (removed ones
marked deleted), dying cgroups, and memory.stat's percpu as each cgroup's own share."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest

from pcpu_bpf.backends.host_stats import cgroup_stats
from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.kernel import cgroups
from pcpu_bpf.kernel.cgroups import CgroupPaths
from pcpu_bpf.model.ranking import OTHER

HYBRID = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
"""
UNIFIED = "29 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_hierarchies_from_mountinfo(tmp_path: Path) -> None:
    (tmp_path / "hybrid").write_text(HYBRID)
    (tmp_path / "unified").write_text(UNIFIED)
    assert cgroups.unified_root(tmp_path / "hybrid") == Path("/sys/fs/cgroup/unified")
    assert cgroups.v1_root("memory", tmp_path / "hybrid") == Path("/sys/fs/cgroup/memory")
    assert cgroups.v1_root("cpu", tmp_path / "hybrid") == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert cgroups.unified_root(tmp_path / "unified") == Path("/sys/fs/cgroup")
    assert cgroups.v1_root("memory", tmp_path / "unified") is None
    # A pod: an extra mount elsewhere, and the node's mounted over its own view.
    (tmp_path / "pod").write_text(
        "41 22 0:26 / /mnt/elsewhere rw - cgroup2 cgroup2 rw\n"
        + UNIFIED
        + "40 29 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
    )
    assert cgroups.unified_root(tmp_path / "pod") == Path("/sys/fs/cgroup")
    (tmp_path / "odd").write_text("41 22 0:26 / /mnt/elsewhere rw - cgroup2 cgroup2 rw\n")
    assert cgroups.unified_root(tmp_path / "odd") == Path("/mnt/elsewhere")


def make_tree(root: Path, percpu: dict[str, int | None]) -> None:
    """Cgroup-like directories; a memory.stat with its percpu line where one is given."""
    for rel, value in percpu.items():
        directory = root / rel.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        if value is not None:
            (directory / "memory.stat").write_text(f"anon 0\nfile 4096\npercpu {value}\nsock 0\n")


def test_own_percpu_is_the_cgroups_minus_its_childrens(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {"/": None, "/a": 1000, "/a/b": 300, "/a/c": 200, "/a/c/d": 50, "/e": 64, "/x": None},
    )
    assert cgroups.memory_percpu_bytes(tmp_path) == {
        "/a": 500,
        "/a/b": 300,
        "/a/c": 150,
        "/a/c/d": 50,
        "/e": 64,
    }
    (tmp_path / "memory.stat").write_text("percpu 2000\n")
    assert cgroups.memory_percpu_bytes(tmp_path)["/"] == 2000 - 1000 - 64


def test_no_memory_controller_is_none_and_a_bad_file_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"/a": None})
    assert cgroups.memory_percpu_bytes(tmp_path) is None
    (tmp_path / "a" / "memory.stat").write_text("anon 0\n")
    with pytest.raises(StatsParseError, match="no percpu line"):
        cgroups.memory_percpu_bytes(tmp_path)


def test_dying_counts(tmp_path: Path) -> None:
    v2 = tmp_path / "unified"
    v2.mkdir()
    (v2 / "cgroup.stat").write_text("nr_descendants 7\nnr_dying_descendants 3\n")
    v1 = tmp_path / "memory"
    make_tree(v1, {"/": None, "/a": None, "/a/b": None})
    proc = tmp_path / "cgroups"
    proc.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t8\t1\n")
    assert cgroups.dying_descendants(v2) == 3
    assert cgroups.v1_dying("memory", v1, proc) == 8 - 3
    stats = cgroup_stats(1, unified=v2, memory_v1=v1, proc_cgroups=proc)
    assert stats.dying == {"unified": 3, "memory": 5}
    assert stats.memory_percpu_bytes is None  # no memory.stat in the v2 tree


def test_memory_percpu_is_bounded_to_the_largest(tmp_path: Path) -> None:
    make_tree(tmp_path, {"/a": 100, "/b": 300, "/c": 200, "/d": 1})
    (tmp_path / "cgroup.stat").write_text("nr_dying_descendants 0\n")
    stats = cgroup_stats(2, unified=tmp_path, memory_v1=None)
    assert stats.memory_percpu_bytes == {"/b": 300, "/c": 200, OTHER: 101}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_paths_of_ids_and_removed_cgroups(tmp_path: Path) -> None:
    make_tree(tmp_path, {"/a": None, "/a/b": None})
    ino = {rel: ino for rel, ino, _ in cgroups.walk(tmp_path)}
    clock = Clock()
    paths = CgroupPaths(tmp_path, min_interval=1.0, clock=clock)
    assert paths.labels([ino["/a/b"], ino["/"]]) == {ino["/a/b"]: "/a/b", ino["/"]: "/"}
    assert paths.walks == 1
    # A removed cgroup is seen at once (one stat), without a walk. (A test directory's
    # inode number can be reused at once, a cgroup id cannot: the new one comes first.)
    (tmp_path / "c").mkdir()
    new = (tmp_path / "c").stat().st_ino
    (tmp_path / "a" / "b").rmdir()
    assert paths.labels([ino["/a/b"]]) == {ino["/a/b"]: "/a/b (deleted)"}
    # A new one is found by a walk, but not within min_interval of the last.
    gone = ino["/a/b"]
    assert paths.labels([new, gone]) == {new: f"id:{new}", gone: "/a/b (deleted)"}
    clock.now = 1.5
    assert paths.labels([new, ino["/a/b"]]) == {new: "/c", ino["/a/b"]: "/a/b (deleted)"}
    assert paths.walks == 2
    # Another cgroup under the same path: the old id is deleted.
    (tmp_path / "c").rename(tmp_path / "old")
    (tmp_path / "c").mkdir()
    assert paths.labels([new]) == {new: "/c (deleted)"}
    # Not asked for any more: forgotten (and no walk yet within min_interval).
    paths.labels([ino["/"]])
    assert paths.labels([gone]) == {gone: f"id:{gone}"}


def test_no_hierarchy_reads_ids() -> None:
    assert CgroupPaths(None).labels([7]) == {7: "id:7"}


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 64),
    ]


def kernfs_id(path: Path) -> int:
    """The cgroup's kernfs node id, as name_to_handle_at(2) gives it: cgroup_id()."""
    libc = ctypes.CDLL(None, use_errno=True)
    handle = _FileHandle(handle_bytes=64)
    mount_id = ctypes.c_int()
    at_fdcwd = -100
    if libc.name_to_handle_at(
        at_fdcwd, os.fsencode(path), ctypes.byref(handle), ctypes.byref(mount_id), 0
    ):
        raise OSError(ctypes.get_errno(), f"name_to_handle_at {path}")
    assert handle.handle_bytes == 8
    return int(struct.unpack("<Q", bytes(handle.f_handle[:8]))[0])


@pytest.mark.privileged
def test_a_v2_cgroups_id_is_its_inode_number_and_resolves() -> None:
    root = cgroups.unified_root()
    assert root is not None, "no cgroup v2 mounted"
    made = root / f"pcpu-bpf-test-{os.getpid()}-paths"
    made.mkdir()
    try:
        cgroup_id = made.stat().st_ino
        assert kernfs_id(made) == cgroup_id  # 64-bit: the kernfs id is the inode number
        assert kernfs_id(root) == root.stat().st_ino == 1
        paths = CgroupPaths(root, min_interval=0.0)
        assert paths.labels([cgroup_id]) == {cgroup_id: f"/{made.name}"}
    finally:
        made.rmdir()
    assert paths.labels([cgroup_id]) == {cgroup_id: f"/{made.name} (deleted)"}


@pytest.mark.privileged
def test_the_hosts_cgroups_are_read() -> None:
    root = cgroups.unified_root()
    assert root is not None, "no cgroup v2 mounted"
    memory = cgroups.v1_root("memory")
    stats = cgroup_stats(20, unified=root, memory_v1=memory)
    # Every hierarchy mounted has its dying count: v2, and on a hybrid host v1 memory.
    assert set(stats.dying) == {cgroups.UNIFIED} | ({"memory"} if memory else set())
    assert all(isinstance(n, int) and n >= 0 for n in stats.dying.values())
    # memory.stat's percpu is read exactly where the v2 memory controller gives children one.
    memory_on = "memory" in (root / "cgroup.subtree_control").read_text().split()
    children = any(p.is_dir() for p in root.iterdir())
    assert (stats.memory_percpu_bytes is not None) == (memory_on and children)
