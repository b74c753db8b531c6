"""Human-readable numbers for terminal output (pcpu-top, pcpu-bpf simulate)."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float) -> str:
    """IEC size in at most 8 characters: "512 B", "9.5 KiB", "1023 MiB"."""
    value = float(n)
    # Thresholds sit where rounding would print "1024" or "10.0": the next unit reads better.
    if abs(value) < 1023.5:
        return f"{value:.0f} B"
    for unit in _UNITS[1:]:
        value /= 1024
        if abs(value) < 1023.5 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}" if abs(value) < 9.95 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(x: float) -> str:
    """A per-second rate in at most 6 characters: "0", "0.5", "42.0", "1234", "12.3k"."""
    if x == 0:
        return "0"
    if abs(x) < 99.95:
        return f"{x:.1f}"
    if abs(x) < 99_999.5:
        return f"{x:.0f}"
    return human_int(round(x))


def human_int(n: int) -> str:
    """A count in at most 6 characters: exact up to 999999, then "1.2M", "345G", "7.0T"."""
    if abs(n) < 1_000_000:
        return str(n)
    for scale, suffix in ((1e6, "M"), (1e9, "G"), (1e12, "T"), (1e15, "P")):
        v = abs(n) / scale
        if v < 99.95:
            return f"{n / scale:.1f}{suffix}"
        if v < 999.5 or suffix == "P":
            return f"{n / scale:.0f}{suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


def fit(text: str, width: int) -> str:
    """Shorten ``text`` to ``width`` keeping both ends: kernel names differ at either end."""
    if len(text) <= width:
        return text
    if width < 5:
        return text[:width]
    head = (width - 2 + 1) // 2
    tail = width - 2 - head
    return text[:head] + ".." + text[len(text) - tail :]


def short_bytes(n: float) -> str:
    """IEC size in at most 5 characters, no space: "0", "512", "1.1K", "362K", "1.7M"."""
    value = float(n)
    if abs(value) < 1023.5:
        return f"{value:.0f}"
    for unit in "KMGTP":
        value /= 1024
        if abs(value) < 1023.5 or unit == "P":
            return f"{value:.1f}{unit}" if abs(value) < 9.95 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_age(seconds: float) -> str:
    """A duration in at most 5 characters: "0s", "59s", "12m", "23h", "364d"."""
    for limit, scale, unit in ((60, 1, "s"), (3600, 60, "m"), (86400, 3600, "h")):
        if seconds < limit:
            return f"{int(seconds // scale)}{unit}"
    return f"{int(seconds // 86400)}d"
