"""pcpu-bpf: a profiler for the Linux kernel's percpu memory allocator."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
