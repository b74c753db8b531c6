"""The kernel's own accounting (debugfs percpu_stats, meminfo Percpu), for any backend.

Reading degrades instead of failing: a kernel without CONFIG_PERCPU_STATS (Debian's
stock kernel) or without debugfs still gets everything else. The reason is logged once
per part and carried in KernelStats.errors, so the exporter can count it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.kernel.procfs import read_meminfo_percpu
from pcpu_bpf.model.kernel_stats import KernelStats, PercpuStats

log = logging.getLogger(__name__)


class KernelStatsReader:
    """Reads percpu_stats and meminfo on every call; logs each part's first failure
    unless ``warn`` is off (the daemon's collector logs each outage and recovery itself)."""

    def __init__(
        self,
        debugfs_root: str | Path = "/sys/kernel/debug",
        proc_root: str | Path = "/proc",
        clock: Callable[[], float] = time.monotonic,
        warn: bool = True,
    ) -> None:
        self.debugfs_root = Path(debugfs_root)
        self.proc_root = Path(proc_root)
        self.warn = warn
        self._clock = clock
        self._logged: set[str] = set()

    def __call__(self) -> KernelStats:
        read_at = self._clock()
        errors: dict[str, str] = {}
        stats: PercpuStats | None = None
        meminfo: int | None = None
        try:
            stats = read_percpu_stats(self.debugfs_root)
        except (OSError, StatsParseError) as exc:
            errors["percpu_stats"] = self._reason("percpu_stats", exc)
        try:
            meminfo = read_meminfo_percpu(self.proc_root)
        except (OSError, StatsParseError) as exc:
            errors["meminfo"] = self._reason("meminfo", exc)
        return KernelStats(stats, meminfo, errors, read_at)

    def _reason(self, part: str, exc: Exception) -> str:
        if isinstance(exc, FileNotFoundError) and part == "percpu_stats":
            reason = (
                f"{exc.filename} not found (debugfs not mounted, or a kernel built "
                "without CONFIG_PERCPU_STATS)"
            )
        elif isinstance(exc, PermissionError):
            reason = f"{exc.filename}: permission denied"
        else:
            reason = str(exc)
        if part not in self._logged:
            self._logged.add(part)
            log.log(
                logging.WARNING if self.warn else logging.DEBUG,
                "%s not available: %s",
                part,
                reason,
            )
        return reason


read_kernel_stats = KernelStatsReader()
"""The reader for the standard mount points, shared so each failure is logged once."""
