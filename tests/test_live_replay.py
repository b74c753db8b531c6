"""The simulator places allocations exactly where the live kernel does.

Record the percpu events of a per-CPU BPF map workload in a private tracefs instance,
then `pcpu-bpf replay` the trace: every allocation in a chunk the kernel created during
the recording is placed by the simulator and must land at the kernel's offset, with
real pointers and with hashed ones. The what-if replays of the same trace must change
the chunks as the geometry says.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from waiting import wait_until

from pcpu_bpf.cli import main
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats

TRACEFS = Path("/sys/kernel/tracing")
VALUE_SIZES = (
    8,
    16,
    24,
    40,
    64,
    96,
    136,
    256,
    520,
    1024,
    2048,
    4096,
    4104,
    8192,
    12288,
    16392,
    32768,
)

pytestmark = pytest.mark.privileged


def close_and_settle(fd: int, entries: int) -> None:
    """Close a map and wait until the kernel has freed its elements.

    The kernel emits the alloc event after dropping its lock, so an alloc racing a
    kworker's free can appear in the trace before that free although it was placed
    after it. Letting frees settle keeps the trace order the placement order.
    """
    before = read_percpu_stats().globals.nr_dealloc
    os.close(fd)
    wait_until(
        lambda: read_percpu_stats().globals.nr_dealloc - before >= entries,
        interval=0.002,
        what=f"the kernel to free a closed map's {entries} elements",
    )


def run_workload(traced: Callable[[], str], rng: random.Random) -> None:
    """Spill into new chunks with large maps, punch holes in them, then create and
    close maps of mixed sizes at random."""
    from pcpu_bpf.bpf.syscalls import create_percpu_array

    stats = read_percpu_stats()
    free_now = sum(c.free_bytes for c in stats.chunks)
    # Enough 256 KiB maps to fill every existing chunk and then three new ones; more
    # if other processes freed space meanwhile and no chunk was created yet.
    n_big = (free_now + 3 * stats.info.unit_size) // (64 * 4096) + 1
    big = [(create_percpu_array(4096, 64), 64) for _ in range(n_big)]
    for _ in range(10):
        if "percpu_create_chunk" in traced():
            break
        big += [(create_percpu_array(4096, 64), 64) for _ in range(4)]
    for fd, n in big[::2]:
        close_and_settle(fd, n)
    maps = big[1::2]
    for _ in range(400):
        if maps and rng.random() < 0.35:
            close_and_settle(*maps.pop(rng.randrange(len(maps))))
        else:
            entries = 1 if rng.random() < 0.8 else rng.randrange(2, 7)
            maps.append((create_percpu_array(rng.choice(VALUE_SIZES), entries), entries))
    for fd, n in maps:
        close_and_settle(fd, n)


class TraceStream:
    """trace_pipe read as it fills, into memory: a busy machine (other tests, other
    tenants) can write more percpu events than any ring buffer holds, and a ``trace``
    read at the end would have lost the oldest ones, the workload's first chunks."""

    def __init__(self, inst: Path) -> None:
        self.fd = os.open(inst / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        self.parts: list[bytes] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _read_all(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            if not data:
                return
            self.parts.append(data)

    def _pump(self) -> None:
        while not self.stopping.is_set():
            select.select([self.fd], [], [], 0.05)  # wakes on data, or to look at stopping
            self._read_all()

    def text(self) -> str:
        return b"".join(self.parts).decode()

    def stop(self) -> str:
        """All that was traced; call after the events are disabled."""
        self.stopping.set()
        self.thread.join()
        self._read_all()  # what came between the last read and the disable
        os.close(self.fd)
        return self.text()


def record(tmp_name: str, rng: random.Random, *, hashed: bool = False) -> str:
    inst = TRACEFS / "instances" / tmp_name
    inst.mkdir()
    try:
        (inst / "options/hash-ptr").write_text("1" if hashed else "0")
        (inst / "buffer_size_kb").write_text("16384")
        stream = TraceStream(inst)
        (inst / "events/percpu/enable").write_text("1")
        try:
            run_workload(stream.text, rng)
        finally:
            (inst / "events/percpu/enable").write_text("0")
            text = stream.stop()
        return text
    finally:
        inst.rmdir()


def replay(path: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["replay", str(path), "--json", *args])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = record(f"pcpu-bpf-replay-{os.getpid()}", random.Random(13))
    path = tmp_path_factory.mktemp("live") / "trace.txt"
    path.write_text(text)
    return path


def test_a_live_trace_replays_with_no_difference(trace: Path) -> None:
    doc = replay(trace)
    assert doc["recorded"]["lost"] == 0, "the reader fell behind the trace buffer"
    assert doc["checked"] >= 500, f"only {doc['checked']} allocations landed in new chunks"
    # Another tenant's percpu events close in time to one of ours leave their order in
    # the kernel uncertain; every difference must be one of those, and on a quiet
    # machine there are none at all.
    assert doc["differ"] == doc["differ_concurrent"], doc["differences"]
    assert doc["differ"] <= doc["checked"] // 1000, doc["differences"]
    assert (doc["conflicts"], doc["pointers_differ"]) == (0, 0), doc["conflict_lines"]
    assert doc["chunks_created"] == doc["recorded"]["chunks_created"] >= 3


def test_a_live_trace_with_hashed_pointers_replays_with_no_difference(tmp_path: Path) -> None:
    text = record(f"pcpu-bpf-replay-hashed-{os.getpid()}", random.Random(14), hashed=True)
    path = tmp_path / "hashed.txt"
    path.write_text(text)
    doc = replay(path)
    assert doc["recorded"]["lost"] == 0, "the reader fell behind the trace buffer"
    assert doc["hashed_pointers"] and doc["checked"] >= 500
    assert doc["differ"] == doc["differ_concurrent"] <= doc["checked"] // 1000
    assert doc["conflicts"] == 0, doc["conflict_lines"]


def test_what_if_more_cpus_keeps_the_chunks_and_scales_the_memory(trace: Path) -> None:
    doc = replay(trace, "--cpus", "4")
    base, alt = doc["baseline"], doc["what_if"]
    assert alt["geometry"]["nr_units"] == 4
    for key in ("chunks_created", "chunks_destroyed", "peak_chunks"):
        assert alt[key] == base[key], key
    ratio = 4 / base["geometry"]["nr_units"]
    assert alt["percpu_bytes_peak"] == base["percpu_bytes_peak"] * ratio


def test_what_if_half_the_unit_needs_more_chunks_than_its_capacity(trace: Path) -> None:
    info = read_percpu_stats().info
    unit = info.unit_size // 2
    doc = replay(trace, "--geometry", f"unit_size={unit}")
    base, alt = doc["baseline"], doc["what_if"]
    # what the first chunk cannot hold needs dynamic chunks of the new unit size
    assert alt["peak_chunks"] >= math.ceil((alt["peak_live_bytes"] - info.dyn_size) / unit)
    assert alt["peak_chunks"] > base["peak_chunks"]
    assert alt["chunks_created"] > base["chunks_created"]
