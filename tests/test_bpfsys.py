"""The ctypes bpf(2) wrappers: layouts checked against bpftool, errors as OSError."""

from __future__ import annotations

import json
import subprocess

import pytest
from prog_test_run import run_raw_tp

from pcpu_bpf.bpf import syscalls


@pytest.mark.privileged
def test_create_and_close_percpu_array() -> None:
    fd = syscalls.create_percpu_array(1000, 3, "pcpu_test")
    assert fd > 2
    syscalls.close(fd)


@pytest.mark.privileged
def test_bad_map_is_an_oserror() -> None:
    with pytest.raises(OSError, match=r"bpf\(BPF_MAP_CREATE\)"):
        syscalls.create_percpu_array(1 << 20, 1)  # larger than a percpu unit allows


@pytest.mark.privileged
@pytest.mark.needs_tool("bpftool")
def test_prog_info_matches_bpftool() -> None:
    from pcpu_bpf.backends.bpf import BpfBackend

    with BpfBackend(attach=False, kernel_stats=lambda: None) as b:
        fd = b.program_fds["on_create_chunk"]
        for _ in range(3):
            assert run_raw_tp(fd, [0xFFFF0000]) == 0
        info = syscalls.prog_info(fd)
        out = subprocess.run(
            ["bpftool", "--json", "prog", "show", "id", str(info.id)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        tool = json.loads(out)
        assert tool["id"] == info.id
        assert tool["name"] == info.name == "on_create_chunk"
        assert tool.get("run_cnt", 0) == info.run_cnt
        assert tool.get("run_time_ns", 0) == info.run_time_ns
        assert tool.get("recursion_misses", 0) == info.recursion_misses
        assert b.snapshot().chunk_creations == 3
