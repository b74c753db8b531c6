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
from collections.abc import Mapping
from pathlib import Path

from pcpu_bpf.errors import StatsParseError

TEXT_TYPES = frozenset("tTwW")
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
        self._starts = starts
        self._names = names
        self._restricted = restricted
        self._cache: dict[int | None, str] = {}

    @classmethod
    def from_kallsyms_text(cls, text: str) -> Symbolizer:
        """Parse /proc/kallsyms lines: "ffffffff81234560 T name" with an optional [module]."""
        symbols: list[tuple[int, str | None]] = []
        all_zero = True
        for no, line in enumerate(text.splitlines(), start=1):
            fields = line.split(maxsplit=3)
            if not fields:
                continue
            try:
                addr = int(fields[0], 16)
                kind = fields[1]
                name = fields[2]
            except (IndexError, ValueError):
                raise StatsParseError(f"kallsyms line {no}: malformed: {line!r}") from None
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
        """Load a kallsyms file; OSError propagates."""
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        return cls.from_kallsyms_text(text)

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
        return sum(1 for name in self._names if name is not None)

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
        name = self._names[i] if i >= 0 else None
        return name if name is not None else hex_label(addr)
