"""The kernel's debugfs ``percpu_stats`` text (mm/percpu-stats.c): parser, renderer, reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.model.kernel_stats import (
    CHUNK_FIRST,
    CHUNK_NORMAL,
    CHUNK_RESERVED,
    CHUNK_SIDELINED,
    CHUNK_TO_DEPOPULATE,
    AllocationInfo,
    ChunkStats,
    GlobalStats,
    PercpuStats,
)

# Section headers and the rule under them, verbatim from percpu_stats_show().
_TITLE = "Percpu Memory Statistics"
_INFO_HEADER = "Allocation Info:"
_GLOBAL_HEADER = "Global Stats:"
_CHUNKS_HEADER = "Per Chunk Stats:"
_RULE = "-" * 40

_HEADER_OF_KIND = {
    CHUNK_RESERVED: "Chunk: <- Reserved Chunk",
    CHUNK_FIRST: "Chunk: <- First Chunk",
    CHUNK_TO_DEPOPULATE: "Chunk (to_depopulate)",  # the kernel prints no colon here
    CHUNK_SIDELINED: "Chunk (sidelined):",
    CHUNK_NORMAL: "Chunk:",
}
_KIND_OF_HEADER = {header: kind for kind, header in _HEADER_OF_KIND.items()}

# Field names in print order; the kernel prints each block in exactly this order.
_INFO_FIELDS = tuple(f.name for f in fields(AllocationInfo))
_GLOBAL_FIELDS = tuple(f.name for f in fields(GlobalStats))
_CHUNK_FIELDS = tuple(f.name for f in fields(ChunkStats) if f.name != "kind")


def _value_line(name: str, value: int) -> str:
    # The kernel's "  %-20s: %12lld\n"; %12llu prints the same for the values it holds.
    return f"  {name:<20}: {value:12d}\n"


def render_percpu_stats(stats: PercpuStats) -> str:
    """Render ``stats`` byte for byte as the kernel prints /sys/kernel/debug/percpu_stats."""
    out = [f"{_TITLE}\n{_INFO_HEADER}\n{_RULE}\n"]
    out += [_value_line(n, getattr(stats.info, n)) for n in _INFO_FIELDS]
    out.append(f"\n{_GLOBAL_HEADER}\n{_RULE}\n")
    out += [_value_line(n, getattr(stats.globals, n)) for n in _GLOBAL_FIELDS]
    out.append(f"\n{_CHUNKS_HEADER}\n{_RULE}\n")
    for chunk in stats.chunks:
        out.append(_HEADER_OF_KIND[chunk.kind] + "\n")
        out += [_value_line(n, getattr(chunk, n)) for n in _CHUNK_FIELDS]
        out.append("\n")
    return "".join(out)


class _Lines:
    """A cursor over the text's lines that reports errors by 1-based line number."""

    def __init__(self, text: str) -> None:
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()  # the final newline ends the last line; it does not start one
        # Trailing whitespace is the one thing tolerated on every line (editors, copies).
        self._lines = [line.rstrip() for line in lines]
        self._pos = 0

    def at_end(self) -> bool:
        """True when only blank lines remain."""
        return all(not line for line in self._lines[self._pos :])

    def peek(self) -> str | None:
        return self._lines[self._pos] if self._pos < len(self._lines) else None

    def error(self, reason: str) -> StatsParseError:
        """An error naming the current line; at the end of the text, the last line read."""
        if self._pos < len(self._lines):
            no, line = self._pos + 1, self._lines[self._pos]
            return StatsParseError(f"percpu_stats line {no}: {reason}: {line!r}")
        no, line = self._pos, self._lines[-1] if self._lines else ""
        return StatsParseError(f"percpu_stats line {no}: truncated after it, {reason}: {line!r}")

    def skip(self) -> None:
        self._pos += 1

    def expect(self, wanted: str) -> None:
        if self.peek() != wanted:
            raise self.error(f"expected {wanted!r}")
        self._pos += 1

    def values(self, names: tuple[str, ...]) -> Iterator[int]:
        """Yield the values of ``names``, which must come in exactly this order."""
        for name in names:
            line = self.peek()
            if line is None or not line.startswith("  "):
                raise self.error(f"expected field {name!r}")
            key, sep, raw = line.partition(":")
            if not sep or key.strip() != name:
                raise self.error(f"expected field {name!r}")
            raw = raw.strip()
            # int() alone would also take "+5", "1_000" and non-ASCII digits.
            digits = raw[1:] if raw.startswith("-") else raw
            if not (digits.isascii() and digits.isdigit()):
                raise self.error(f"value of {name!r} is not an integer")
            if len(digits) > 20:  # the kernel prints 64-bit values
                raise self.error(f"value of {name!r} is out of range")
            self._pos += 1
            yield int(raw)


def parse_percpu_stats(text: str) -> PercpuStats:
    """Parse the kernel's percpu_stats text (or ours); raise StatsParseError naming the line."""
    lines = _Lines(text)
    lines.expect(_TITLE)
    lines.expect(_INFO_HEADER)
    lines.expect(_RULE)
    info = AllocationInfo(*lines.values(_INFO_FIELDS))
    lines.expect("")
    lines.expect(_GLOBAL_HEADER)
    lines.expect(_RULE)
    global_stats = GlobalStats(*lines.values(_GLOBAL_FIELDS))
    lines.expect("")
    lines.expect(_CHUNKS_HEADER)
    lines.expect(_RULE)
    chunks: list[ChunkStats] = []
    # The kernel always has a first chunk, so an empty list means a truncated text.
    while not chunks or not lines.at_end():
        header = lines.peek()
        kind = _KIND_OF_HEADER.get(header) if header is not None else None
        if kind is None:
            raise lines.error("expected a chunk header")
        lines.skip()
        chunks.append(ChunkStats(kind, *lines.values(_CHUNK_FIELDS)))
        if not lines.at_end():
            lines.expect("")
    return PercpuStats.of(info, global_stats, tuple(chunks))


def read_percpu_stats(debugfs_root: str | Path = "/sys/kernel/debug") -> PercpuStats:
    """Read and parse <debugfs_root>/percpu_stats; OSError propagates unchanged.

    The caller decides how to degrade: FileNotFoundError means debugfs is not mounted or
    the kernel lacks CONFIG_PERCPU_STATS, PermissionError means not root.
    """
    # errors="replace": stray bytes become a StatsParseError, never a UnicodeDecodeError.
    path = Path(debugfs_root) / "percpu_stats"
    return parse_percpu_stats(path.read_text(encoding="ascii", errors="replace"))
