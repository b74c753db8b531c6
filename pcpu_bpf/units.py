"""Human-readable units for terminal output (pcpu-top, pcpu-bpf simulate)."""

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
