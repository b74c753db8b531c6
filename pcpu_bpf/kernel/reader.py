"""The kernel's own accounting (debugfs percpu_stats, meminfo Percpu), for any backend.

Reading degrades instead of failing: a kernel without CONFIG_PERCPU_STATS (Debian's
stock kernel) or without debugfs still gets everything else. The reason is logged once
per part and carried in KernelStats.errors, so the exporter can count it.

percpu_stats is opened once and read again from its start on every read: debugfs is
root's alone (0700), so a daemon that dropped its capabilities after starting could not
open it again, and an unmounted debugfs does not take the open file with it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats
from pcpu_bpf.kernel.procfs import read_meminfo_percpu
from pcpu_bpf.model.kernel_stats import KernelStats, PercpuStats

log = logging.getLogger(__name__)


class HeldFile:
    """A kernel file opened once, then read from its start each time; opened again only
    when reading the open one fails."""

    _CHUNK = 1 << 16

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> str:
        """The whole text (undecodable bytes replaced); OSError when it cannot be read."""
        if self._fd is not None:
            try:
                return self._read(self._fd)
            except OSError:
                self.close()  # removed from under us: try the path again
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = self._read(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return text

    def _read(self, fd: int) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, self._CHUNK):
            chunks.append(chunk)
        return b"".join(chunks).decode("ascii", errors="replace")

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
        self._percpu_stats = HeldFile(self.debugfs_root / "percpu_stats")

    def __call__(self) -> KernelStats:
        read_at = self._clock()
        errors: dict[str, str] = {}
        stats: PercpuStats | None = None
        meminfo: int | None = None
        try:
            stats = parse_percpu_stats(self._percpu_stats.read())
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
