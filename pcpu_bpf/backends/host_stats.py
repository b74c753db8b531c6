"""The live backend's kernel reading: percpu_stats and meminfo, then the BPF maps and the
cgroups, as one `KernelStats` read at most once per --min-read-interval.

Each part degrades on its own: one that cannot be read (no CAP_SYS_ADMIN to list BPF
maps, no cgroup v2 mounted) is named in ``errors`` with the reason, logged once, and the
others are still served.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pcpu_bpf.bpf.host_maps import host_maps
from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.kernel import cgroups
from pcpu_bpf.model.kernel_stats import BpfMapOwner, CgroupStats, KernelStats
from pcpu_bpf.model.ranking import DEFAULT_MAX_CGROUPS, OTHER, top_n

BPF_MAPS, CGROUPS = "bpf_maps", "cgroups"
# Series per family for the largest owners; the rest is summed under OTHER.
DEFAULT_MAX_BPF_MAPS = 20
_NEEDS_ADMIN = "listing every BPF map on the host needs CAP_SYS_ADMIN"


def bpf_map_owners(possible_cpus: int, online_cpus: int, limit: int) -> dict[BpfMapOwner, int]:
    """Every map's percpu bytes by (name, type, programs): the largest ``limit``, then OTHER."""
    owners: dict[BpfMapOwner, int] = {}
    for m in host_maps(possible_cpus, online_cpus):
        key = BpfMapOwner(m.name, m.type_name, m.program_label)
        owners[key] = owners.get(key, 0) + m.percpu_bytes
    return top_n(owners, limit, BpfMapOwner(OTHER, "", ""))


def cgroup_stats(
    limit: int,
    *,
    unified: Path | None,
    memory_v1: Path | None,
    proc_cgroups: str | Path = "/proc/cgroups",
) -> CgroupStats:
    """Dying cgroups by hierarchy, and the cgroups' own memory.stat percpu (largest N)."""
    if unified is None and memory_v1 is None:
        raise FileNotFoundError("no cgroup v2 and no v1 memory hierarchy mounted")
    dying: dict[str, int] = {}
    charged: dict[str, int] | None = None
    if unified is not None:
        dying[cgroups.UNIFIED] = cgroups.dying_descendants(unified)
        own = cgroups.memory_percpu_bytes(unified)
        if own is not None:
            charged = top_n(own, limit, OTHER)
    if memory_v1 is not None:
        dying["memory"] = cgroups.v1_dying("memory", memory_v1, proc_cgroups)
    return CgroupStats(dying=dying, memory_percpu_bytes=charged)


class HostStatsReader:
    """The BPF maps' and the cgroups' parts, added to a reading of the kernel's stats."""

    def __init__(
        self,
        *,
        possible_cpus: int,
        max_bpf_maps: int = DEFAULT_MAX_BPF_MAPS,
        max_cgroups: int = DEFAULT_MAX_CGROUPS,
        mountinfo: str | Path = "/proc/self/mountinfo",
    ) -> None:
        self._possible = possible_cpus
        self._max_bpf_maps = max_bpf_maps
        self._max_cgroups = max_cgroups
        self._mountinfo = mountinfo

    def add_owners(self, stats: KernelStats) -> KernelStats:
        """``stats`` with the BPF maps' and the cgroups' parts read now."""
        errors = dict(stats.errors)
        maps: dict[BpfMapOwner, int] | None = None
        groups: CgroupStats | None = None
        try:
            online = os.cpu_count() or 1  # what htab_map_alloc sized its counter by
            maps = bpf_map_owners(self._possible, online, self._max_bpf_maps)
        # Not logged here: the collector logs a failing part once per outage, and the
        # capability search at start reads with too few on purpose.
        except PermissionError:
            errors[BPF_MAPS] = _NEEDS_ADMIN
        except OSError as exc:
            errors[BPF_MAPS] = str(exc)
        try:
            groups = cgroup_stats(
                self._max_cgroups,
                unified=cgroups.unified_root(self._mountinfo),
                memory_v1=cgroups.v1_root("memory", self._mountinfo),
            )
        except (OSError, StatsParseError, ValueError) as exc:
            errors[CGROUPS] = str(exc)
        return dataclasses.replace(stats, errors=errors, bpf_maps=maps, cgroups=groups)
