"""Backends: where Snapshots come from. `open_backend` is the one place that chooses."""

from __future__ import annotations

from typing import Any

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.errors import PcpuError

BACKENDS = ("bpf", "sim")

__all__ = ["BACKENDS", "Backend", "open_backend"]


def open_backend(name: str, **options: Any) -> Backend:
    """Start the named backend ("bpf" or "sim") with its keyword options."""
    if name == "bpf":
        from pcpu_bpf.backends.bpf import BpfBackend

        return BpfBackend(**options)
    if name == "sim":
        from pcpu_bpf.backends.sim import SimBackend

        return SimBackend(**options)
    raise PcpuError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
