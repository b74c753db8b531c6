"""Small /proc and /sys readers: each a pure parse_* on text and a read_* taking the root."""

from __future__ import annotations

import re
from pathlib import Path

from pcpu_bpf.errors import StatsParseError

# fs/proc/meminfo.c: show_val_kb() prints "%-16s%8lu kB" ("Percpu:" since 4.12).
# [0-9], not \d: \d also matches non-ASCII digits, which int() would then accept.
# At most 20 digits (a u64): longer ones are no kernel's, and int() refuses past 4300.
_PERCPU_LINE = re.compile(r"Percpu:\s+([0-9]{1,20}) kB")
_CPU_RANGE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
# Above any CONFIG_NR_CPUS (at most 8192): a corrupt range must not build a huge set.
_MAX_CPUS = 1 << 16


def _read(path: Path) -> str:
    # errors="replace": stray bytes become a parse error, never a UnicodeDecodeError.
    return path.read_text(encoding="utf-8", errors="replace")


def parse_meminfo_percpu(text: str) -> int:
    """Bytes on the ``Percpu:`` line of /proc/meminfo (printed in kB)."""
    found: int | None = None
    for no, line in enumerate(text.split("\n"), start=1):
        if not line.startswith("Percpu:"):
            continue
        match = _PERCPU_LINE.fullmatch(line.rstrip())
        if match is None:
            raise StatsParseError(f"meminfo line {no}: malformed Percpu line: {line!r}")
        if found is not None:
            raise StatsParseError(f"meminfo line {no}: second Percpu line: {line!r}")
        found = int(match.group(1)) * 1024
    if found is None:
        raise StatsParseError("meminfo: no 'Percpu:' line (kernel older than 4.12?)")
    return found


def read_meminfo_percpu(proc_root: str | Path = "/proc") -> int:
    """Read <proc_root>/meminfo and return its Percpu bytes; OSError propagates."""
    return parse_meminfo_percpu(_read(Path(proc_root) / "meminfo"))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """CPU numbers of a kernel cpulist ("0-1", "0,2-5"), ascending and without repeats."""
    stripped = text.strip()
    cpus: set[int] = set()
    for part in stripped.split(","):
        match = _CPU_RANGE.fullmatch(part)
        if match is None:
            raise StatsParseError(f"cpu list: bad range {part!r} in {stripped!r}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise StatsParseError(f"cpu list: descending range {part!r} in {stripped!r}")
        if last >= _MAX_CPUS:
            raise StatsParseError(f"cpu list: implausible CPU number in {stripped!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def parse_possible_cpus(text: str) -> int:
    """Number of CPUs in /sys/devices/system/cpu/possible: the percpu allocator's unit count."""
    return len(parse_cpu_list(text))


def read_possible_cpus(sys_root: str | Path = "/sys") -> int:
    """Read <sys_root>/devices/system/cpu/possible and count it; OSError propagates."""
    return parse_possible_cpus(_read(Path(sys_root) / "devices/system/cpu/possible"))


def kernel_release(proc_root: str | Path = "/proc") -> str:
    """The running kernel's release (``uname -r``) from <proc_root>/sys/kernel/osrelease."""
    return _read(Path(proc_root) / "sys/kernel/osrelease").strip()
