"""`pcpu-bpf record`: the ring buffer's records decoded, and a live round trip through replay."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_live_replay import run_workload
from waiting import wait_until

import pcpu_bpf.cli.record as record_cli
from pcpu_bpf.bpf.recorder import decode, ring_pages
from pcpu_bpf.bpf.ringbuf import BUSY_BIT, DISCARD_BIT, parse_records
from pcpu_bpf.cli import main
from pcpu_bpf.errors import BackendUnavailable
from pcpu_bpf.model.events import PercpuAlloc, PercpuFree
from pcpu_bpf.model.layout import RECORD_EVENT_FORMAT

BIN = Path(sys.executable).parent


def packed(kind: int, flags: int, **fields: int) -> bytes:
    values = {
        "ts": 5_000_000_123,
        "pid_tgid": (42 << 32) | 43,
        "cgroup": 7,
        "call_site": 0,
        "size": 0,
        "align": 0,
        "base": 0,
        "ptr": 0,
        "bytes_alloc": 0,
        "gfp": 0,
        "off": 0,
        "cpu": 1,
    } | fields
    return struct.pack(RECORD_EVENT_FORMAT, *values.values(), kind, flags, b"bpftool\0")


def test_a_record_decodes_to_the_event_and_its_surroundings() -> None:
    raw = packed(
        0,
        1 | 4 | 8 | 16,
        call_site=0xFFFFFFFF81234567,
        size=16,
        align=8,
        base=0xFFFFE8FFFFC00000,
        ptr=0x60795BAFF1C0,
        bytes_alloc=64,
        gfp=0xCC0,
        off=33216,
    )
    r = decode(raw)
    assert r.event == PercpuAlloc(
        0xFFFFFFFF81234567, True, False, 16, 8, 0xFFFFE8FFFFC00000, 33216, 0x60795BAFF1C0, 64, 0xCC0
    )
    assert (r.ts_ns, r.cpu, r.pid, r.tgid, r.comm, r.cgroup) == (
        5_000_000_123,
        1,
        43,
        42,
        "bpftool",
        7,
    )
    old_kernel = decode(packed(0, 2, size=8, align=8))  # no call_site, bytes_alloc, gfp_flags
    assert isinstance(old_kernel.event, PercpuAlloc) and old_kernel.event.is_atomic
    assert (
        old_kernel.event.call_site,
        old_kernel.event.bytes_alloc,
        old_kernel.event.gfp_flags,
    ) == (
        None,
        None,
        None,
    )
    assert decode(packed(1, 0, base=0x10, off=8, ptr=0x18)).event == PercpuFree(0x10, 8, 0x18)
    with pytest.raises(ValueError, match="kind 9"):
        decode(packed(9, 0))


def test_ring_records_wrap_and_busy_and_discarded_ones() -> None:
    size = 64
    data = bytearray(2 * size)

    def put(at: int, length: int, payload: bytes) -> None:
        for i, b in enumerate(struct.pack("<II", length, 0) + payload):
            data[(at + i) % size] = b
            data[(at + i) % size + size] = b  # the area is mapped twice

    put(48, 8, b"AAAAAAAA")  # wraps past the end
    put(64, 4 | DISCARD_BIT, b"BBBB")
    put(80, 8, b"CCCCCCCC")
    put(96, 8 | BUSY_BIT, b"DDDDDDDD")
    records, consumer = parse_records(bytes(data), size, 48, 112)
    assert records == [b"AAAAAAAA", b"CCCCCCCC"] and consumer == 96  # stops at the busy one


def test_the_ring_is_a_power_of_two_of_pages() -> None:
    assert ring_pages(16 << 20) == 4096
    with pytest.raises(BackendUnavailable, match="power of two"):
        ring_pages(3 * 4096)


def test_without_the_live_side_record_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> None:
        raise BackendUnavailable("not root: loading BPF programs needs CAP_BPF")

    monkeypatch.setattr(record_cli, "Recorder", refuse)
    result = CliRunner().invoke(main, ["record", "--duration", "1"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "Error: BPF unavailable: not root: loading BPF programs needs CAP_BPF; run "
        "`pcpu-bpf doctor` for the fix\n"
    )


def start_recording(path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`pcpu-bpf record` in the background, returned once its programs are attached."""
    proc = subprocess.Popen(
        [str(BIN / "pcpu-bpf"), "record", "--duration", "3600", "-o", str(path), *args],
        stderr=subprocess.PIPE,
    )
    partial = Path(f"{path}.partial")
    try:
        # the header is written and flushed once the programs are attached
        wait_until(
            lambda: proc.poll() is not None or (partial.exists() and partial.stat().st_size > 0),
            what="pcpu-bpf record to attach",
            timeout=120,
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    except BaseException:
        proc.kill()  # a recorder left running would keep its programs attached
        proc.communicate()
        raise
    return proc


def stop_recording(proc: subprocess.Popen[bytes], how: int = signal.SIGINT) -> str:
    proc.send_signal(how)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err.decode()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.privileged
def test_round_trip_record_then_replay_lands_every_allocation_at_the_kernels_offset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.jsonl"
    proc = start_recording(path)
    try:
        run_workload(lambda: path.with_suffix(".jsonl.partial").read_text(), random.Random(13))
    finally:
        err = stop_recording(proc)
    assert "stopped: interrupted" in err and not Path(f"{path}.partial").exists()
    doc = lines(path)
    header, events, end = doc[0], doc[1:-1], doc[-1]
    assert header["version"] == 1 and header["geometry"]["unit_size"] > 0
    assert header["percpu_stats"].startswith("Percpu Memory Statistics")
    assert (end["type"], end["lost"], end["events"]) == ("end", 0, len(events))
    assert all(
        {"ts", "cpu", "pid", "tgid", "comm", "cgroup"} <= set(e) and e["cpu"] is not None
        for e in events
    )
    result = CliRunner().invoke(main, ["replay", str(path), "--json"])
    assert result.exit_code == 0, result.output
    replayed = json.loads(result.stdout)
    assert replayed["checked"] >= 500, replayed["checked"]
    # Another tenant's events close in time to one of ours leave the kernel's order
    # uncertain; every difference must be one of those (on a quiet machine: none).
    assert replayed["differ"] == replayed["differ_concurrent"], replayed["differences"]
    assert replayed["differ"] <= replayed["checked"] // 1000
    assert (replayed["conflicts"], replayed["pointers_differ"]) == (0, 0)
    assert replayed["chunks_created"] == replayed["recorded"]["chunks_created"] >= 3


@pytest.mark.privileged
def test_a_full_ring_buffer_loses_events_and_says_how_many(tmp_path: Path) -> None:
    path = tmp_path / "small-ring.jsonl"
    proc = start_recording(path, "--ring-size", "4096")  # one page: about 36 events
    try:
        from pcpu_bpf.bpf.syscalls import create_percpu_array

        for _ in range(20):  # 20 x 256 allocations, then as many frees, at once
            os.close(create_percpu_array(8, 256))
        wait_until(
            lambda: '"type":"lost"' in Path(f"{path}.partial").read_text(),
            what="a lost line",
        )
    finally:
        stop_recording(proc, signal.SIGTERM)
    doc = lines(path)
    lost_lines = [d for d in doc if d["type"] == "lost"]
    end = doc[-1]
    assert end["reason"] == "interrupted" and end["lost"] > 0
    assert sum(d["count"] for d in lost_lines) == end["lost"]
    assert all(d["cpu"] is not None and d["ts"] for d in lost_lines)


class FlushedText(io.StringIO):
    """A file that remembers what had been flushed."""

    flushed = ""

    def flush(self) -> None:
        self.flushed = self.getvalue()


class QuietRecorder:
    """A recorder on a host with no percpu events: the first wait is interrupted."""

    nr_possible_cpus = 2

    def __init__(self, out: FlushedText) -> None:
        self.out = out
        self.flushed_at_first_wait = ""

    def wait(self, timeout: float) -> None:
        self.flushed_at_first_wait = self.out.flushed
        raise KeyboardInterrupt

    def drain(self) -> list[Any]:
        return []

    def lost(self) -> list[int]:
        return [0, 0]


def test_the_header_is_flushed_before_any_event_comes() -> None:
    out = FlushedText()
    recorder = QuietRecorder(out)
    events, lost, reason = record_cli._record(recorder, out, 60.0, 10, 1 << 20)  # type: ignore[arg-type]
    assert (events, lost, reason) == (0, 0, "interrupted")
    first = json.loads(recorder.flushed_at_first_wait)
    assert first["type"] == "header"
    assert json.loads(out.flushed.splitlines()[-1])["type"] == "end"
