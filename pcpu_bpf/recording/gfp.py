"""GFP flags as a tracefs trace prints them (``gfp_flags=GFP_KERNEL|__GFP_ACCOUNT``) and back.

The names and bits are 6.18's (include/linux/gfp_types.h), in the order the tracepoint's
__print_flags() tries them: composite names first, the first one whose bits are all set
wins and its bits are taken away, and whatever is left is printed in hex.
"""

from __future__ import annotations

_BITS = {
    "__GFP_DMA": 0x1,
    "__GFP_HIGHMEM": 0x2,
    "__GFP_DMA32": 0x4,
    "__GFP_MOVABLE": 0x8,
    "__GFP_RECLAIMABLE": 0x10,
    "__GFP_HIGH": 0x20,
    "__GFP_IO": 0x40,
    "__GFP_FS": 0x80,
    "__GFP_ZERO": 0x100,
    "__GFP_DIRECT_RECLAIM": 0x400,
    "__GFP_KSWAPD_RECLAIM": 0x800,
    "__GFP_WRITE": 0x1000,
    "__GFP_NOWARN": 0x2000,
    "__GFP_RETRY_MAYFAIL": 0x4000,
    "__GFP_NOFAIL": 0x8000,
    "__GFP_NORETRY": 0x10000,
    "__GFP_MEMALLOC": 0x20000,
    "__GFP_COMP": 0x40000,
    "__GFP_NOMEMALLOC": 0x80000,
    "__GFP_HARDWALL": 0x100000,
    "__GFP_THISNODE": 0x200000,
    "__GFP_ACCOUNT": 0x400000,
    "__GFP_ZEROTAGS": 0x800000,
    "__GFP_NO_OBJ_EXT": 0x1000000,
}
_RECLAIM = 0xC00
_KERNEL = _RECLAIM | 0x40 | 0x80
_USER = _KERNEL | 0x100000
_HIGHUSER_MOVABLE = _USER | 0x2 | 0x8
_TRANSHUGE_LIGHT = (_HIGHUSER_MOVABLE | 0x40000 | 0x80000 | 0x2000) & ~_RECLAIM
# (name, bits) in print order: the composites, then __GFP_RECLAIM and the single bits.
FLAG_NAMES: tuple[tuple[str, int], ...] = (
    ("GFP_TRANSHUGE", _TRANSHUGE_LIGHT | 0x400),
    ("GFP_TRANSHUGE_LIGHT", _TRANSHUGE_LIGHT),
    ("GFP_HIGHUSER_MOVABLE", _HIGHUSER_MOVABLE),
    ("GFP_HIGHUSER", _USER | 0x2),
    ("GFP_USER", _USER),
    ("GFP_KERNEL_ACCOUNT", _KERNEL | 0x400000),
    ("GFP_KERNEL", _KERNEL),
    ("GFP_NOFS", _RECLAIM | 0x40),
    ("GFP_ATOMIC", 0x20 | 0x800),
    ("GFP_NOIO", _RECLAIM),
    ("GFP_NOWAIT", 0x800 | 0x2000),
    ("GFP_DMA", 0x1),
    ("GFP_DMA32", 0x4),
    ("__GFP_RECLAIM", _RECLAIM),
    *_BITS.items(),
)
_BY_NAME = dict(FLAG_NAMES)


def parse_gfp(text: str) -> int:
    """``GFP_USER|__GFP_NOWARN``, ``none`` or hex parts -> the bits; ValueError if unknown."""
    if text == "none":
        return 0
    bits = 0
    for part in text.split("|"):
        if part in _BY_NAME:
            bits |= _BY_NAME[part]
        elif part.startswith("0x"):
            bits |= int(part, 16)
        else:
            raise ValueError(f"unknown gfp flag {part!r}")
    return bits


def format_gfp(bits: int) -> str:
    """The text __print_flags() prints for ``bits``."""
    if not bits:
        return "none"
    parts = []
    for name, mask in FLAG_NAMES:
        if bits & mask == mask:
            parts.append(name)
            bits &= ~mask
            if not bits:
                break
    if bits:
        parts.append(f"{bits:#x}")
    return "|".join(parts)
