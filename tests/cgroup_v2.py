"""Run part of a test inside a fresh cgroup v2 (not a test).

The whole test process moves into the new cgroup and back (cgroup v2 moves every thread
of a process together); what it allocates meanwhile is the cgroup's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pcpu_bpf.kernel.cgroups import unified_root


def own_cgroup() -> str:
    """This process's cgroup v2 path ("0::/path" of /proc/self/cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise RuntimeError("no cgroup v2 line in /proc/self/cgroup")


def root() -> Path:
    found = unified_root()
    if found is None:
        raise RuntimeError("cgroup v2 is not mounted")
    return found


def cgroup_id(path: str) -> int:
    """The cgroup v2 id of ``path``: its directory's inode number (64-bit kernels)."""
    return (root() / path.lstrip("/")).stat().st_ino


@contextmanager
def fresh_cgroup(name: str) -> Iterator[str]:
    """A new cgroup under the root, this process inside it for the block; its path. The
    cgroup is left in place (removing it is the test's business: ``remove``)."""
    home = own_cgroup()
    path = f"/{name}"
    directory = root() / name
    directory.mkdir()
    (directory / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield path
    finally:
        (root() / home.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))


def remove(path: str) -> None:
    """Remove an empty cgroup (its id stays with what it allocated)."""
    (root() / path.lstrip("/")).rmdir()
