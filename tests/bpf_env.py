"""When the BPF tests can run here, shared by the privileged test modules (not a test)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

TRACEFS = Path("/sys/kernel/tracing")
FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"


def bpf_unavailable_reason() -> str | None:
    """Why the live-kernel BPF tests cannot run, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (loads BPF programs)"
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not importable: apt install python3-bpfcc; venv --system-site-packages"
    if not (TRACEFS / "events/percpu/percpu_alloc_percpu").is_dir():
        return f"no percpu tracepoints under {TRACEFS}: mount -t tracefs nodev {TRACEFS}"
    return None


def require_bpf() -> None:
    """Skip the calling test, with the reason, unless the BPF backend can run."""
    reason = bpf_unavailable_reason()
    if reason:
        pytest.skip(reason)
