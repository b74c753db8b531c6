"""Kernel address -> function name, from /proc/kallsyms or a scenario's symbol table.

Only text symbols name functions: types ``t``/``T`` and the weak ``w``/``W`` (in kallsyms
a weak function that nothing overrode is still the code that runs). Every other symbol
(data, rodata, bss, absolute) only ends the range of the text symbol before it, so an
address in data never resolves to the function that happens to precede it. A symbol
covers [its address, the next symbol's address); the highest one covers LAST_SYMBOL_SIZE
bytes. Anything uncovered resolves to a stable hex label.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Iterable, Mapping
from pathlib import Path

from pcpu_bpf.errors import StatsParseError

TEXT_TYPES = frozenset("tTwW")
# A kallsyms address: up to 16 hex digits, no sign, prefix or underscores (int() takes them).
_ADDRESS = re.compile(r"[0-9a-fA-F]{1,16}")
# Nothing bounds the highest symbol (kallsyms has no sizes); one page is a generous
# function and keeps a stray address far above it from getting a name.
LAST_SYMBOL_SIZE = 0x1000
UNKNOWN = "unknown"  # an event without the call_site field
_CACHE_SIZE = 1 << 16  # distinct call sites are a few thousand; this is only a bound


def hex_label(addr: int) -> str:
    """The label of an address no symbol covers: 0x and 16 lowercase hex digits."""
    return f"0x{addr:016x}"


class Symbolizer:
    """Resolves kernel addresses to the name of the function that contains them."""

    def __init__(self, symbols: list[tuple[int, str | None]], restricted: bool = False) -> None:
        """Build from (address, name) pairs; a None name marks where a range ends."""
        starts: list[int] = []
        names: list[str | None] = []
        # Stable sort: of symbols sharing an address, the first listed names it.
        for addr, name in sorted(symbols, key=lambda s: s[0]):
            if starts and starts[-1] == addr:
                if names[-1] is None and name is not None:
                    names[-1] = name  # a function beats a marker at the same address
                continue
            if names and names[-1] is None and name is None:
                continue  # consecutive markers: the first already ends the range
            starts.append(addr)
            names.append(name)
        if names and names[-1] is not None:
            starts.append(starts[-1] + LAST_SYMBOL_SIZE)
            names.append(None)
        # A daemon keeps this for its life: 120,000 kallsyms entries as Python ints and
        # strs take about 25 MB, packed as below about 3 MB. A name is blob[off[i]:off[i+1]];
        # an empty one marks the end of a range.
        encoded = [(name or "").encode() for name in names]
        offsets = [0]
        for e in encoded:
            offsets.append(offsets[-1] + len(e))
        self._starts = array("Q", starts)
        self._offsets = array("Q", offsets)
        self._blob = b"".join(encoded)
        self._restricted = restricted
        self._cache: dict[int | None, str] = {}

    @classmethod
    def from_kallsyms_text(cls, text: str) -> Symbolizer:
        """Parse /proc/kallsyms lines: "ffffffff81234560 T name" with an optional [module]."""
        return cls._from_lines(text.splitlines())

    @classmethod
    def _from_lines(cls, lines: Iterable[str]) -> Symbolizer:
        symbols: list[tuple[int, str | None]] = []
        all_zero = True
        for no, line in enumerate(lines, start=1):
            fields = line.split(maxsplit=3)
            if not fields:
                continue
            if len(fields) < 3 or not _ADDRESS.fullmatch(fields[0]):
                raise StatsParseError(f"kallsyms line {no}: malformed: {line!r}")
            addr, kind, name = int(fields[0], 16), fields[1], fields[2]
            if addr:
                all_zero = False
            symbols.append((addr, name if kind in TEXT_TYPES else None))
        # Without CAP_SYSLOG (kptr_restrict) every address reads as zero; systemd's
        # ProtectKernelTunables= leaves an empty file. Either way: no names at all.
        if all_zero:
            return cls([], restricted=True)
        return cls(symbols)

    @classmethod
    def from_file(cls, path: str | Path = "/proc/kallsyms") -> Symbolizer:
        """Load a kallsyms file, line by line; OSError propagates."""
        with Path(path).open(encoding="utf-8", errors="replace") as f:
            return cls._from_lines(line.rstrip("\n") for line in f)

    @classmethod
    def from_symbols(cls, symbols: Mapping[str, int]) -> Symbolizer:
        """Build from name -> start address (a simulator scenario's small symbol table)."""
        return cls([(addr, name) for name, addr in symbols.items()])

    @property
    def is_restricted(self) -> bool:
        """True when kallsyms gave no addresses: all zero (no CAP_SYSLOG) or empty (hidden)."""
        return self._restricted

    def __len__(self) -> int:
        """Number of function names known."""
        return sum(1 for i in range(len(self._starts)) if self._name(i) is not None)

    def _name(self, i: int) -> str | None:
        name = self._blob[self._offsets[i] : self._offsets[i + 1]]
        return name.decode() if name else None

    def ranges(self, names: Iterable[str]) -> list[tuple[int, int]]:
        """The code of the functions ``names``, as [start, end) address ranges, in address
        order; a name kallsyms lists more than once (static functions) has several."""
        wanted = set(names)
        return [
            (self._starts[i], self._starts[i + 1])
            for i in range(len(self._starts) - 1)
            if self._name(i) in wanted
        ]

    def resolve(self, addr: int | None) -> str:
        """Name of the function containing ``addr``; a hex label if none, "unknown" for None."""
        label = self._cache.get(addr)
        if label is None:
            label = self._lookup(addr)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # a crude bound; a working set of call sites refills fast
            self._cache[addr] = label
        return label

    def _lookup(self, addr: int | None) -> str:
        if addr is None:
            return UNKNOWN
        i = bisect.bisect_right(self._starts, addr) - 1
        name = self._name(i) if i >= 0 else None
        return name if name is not None else hex_label(addr)
