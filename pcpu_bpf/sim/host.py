"""Derive the simulator's Geometry from the live machine (`--geometry host`)."""

from __future__ import annotations

from pathlib import Path

from pcpu_bpf.errors import PcpuError, ScenarioError
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.kernel.procfs import parse_possible_cpus
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S, Geometry

# The geometries `--geometry` names, besides "host" (this machine's).
NAMED_GEOMETRIES: dict[str, Geometry] = {"default": CONFIG_L, "small": CONFIG_S}


def named_geometry(name: str) -> tuple[Geometry, list[str]]:
    """A geometry by name (NAMED_GEOMETRIES, or "host"), and what it assumes."""
    if name != "host":
        return NAMED_GEOMETRIES[name], []
    try:
        return host_geometry()
    except OSError as exc:
        raise PcpuError(f"--geometry host needs the live percpu_stats and sysfs: {exc}") from exc


def host_geometry(
    debugfs_root: str | Path = "/sys/kernel/debug",
    sys_root: str | Path = "/sys",
    proc_root: str | Path = "/proc",
) -> tuple[Geometry, list[str]]:
    """This machine's geometry, and the assumptions that went into it.

    percpu_stats' "Allocation Info" gives the six pcpu_alloc_info sizes exactly; the
    possible CPUs come from sysfs. What neither says is assumed and reported.
    """
    info = read_percpu_stats(debugfs_root).info
    if min(info.unit_size, info.alloc_size, info.dyn_size) <= 0 or info.unit_size % 4096:
        raise ScenarioError(f"percpu_stats has an impossible geometry: {info}")
    possible = parse_possible_cpus((Path(sys_root) / "devices/system/cpu/possible").read_text())
    assumptions = []
    # Units come in allocations of alloc_size / unit_size; assume one NUMA group.
    upa = max(info.alloc_size // info.unit_size, 1)
    nr_units = -(-possible // upa) * upa
    assumptions.append(f"one NUMA group: {nr_units} units for {possible} possible CPUs")
    cmdline = _read(Path(proc_root) / "cmdline")
    cgroups = _read(Path(proc_root) / "cgroups")
    memcg = "cgroup.memory=nokmem" not in cmdline and any(
        line.split()[:1] == ["memory"] for line in cgroups.splitlines()
    )
    assumptions.append(
        "memcg kmem accounting "
        + ("on (memory controller present, no cgroup.memory=nokmem)" if memcg else "off")
    )
    geometry = Geometry.from_info(
        info, nr_possible_cpus=possible, nr_units=nr_units, memcg_kmem=memcg
    )
    return geometry, assumptions


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
