"""The simulator places allocations exactly where the live kernel does.

Record the percpu events of a per-CPU BPF map workload in a private tracefs instance
with pointer hashing off; every chunk the kernel creates during the recording starts
fully free, so replaying every event that lands in it into a fresh simulated chunk must
give the kernel's offsets, one for one.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from waiting import wait_until

from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.sim.chunk import Chunk, GlobalCounters
from pcpu_bpf.sim.geometry import CONFIG_L

TRACEFS = Path("/sys/kernel/tracing")
LINE = re.compile(r"\s(percpu_\w+): (.*)$")
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


def parse_trace(text: str) -> list[tuple[str, dict[str, str]]]:
    """(event name, fields) for each percpu line of a tracefs text trace."""
    events = []
    for line in text.splitlines():
        m = LINE.search(line)
        if m:
            fields = dict(f.split("=", 1) for f in m[2].split() if "=" in f)
            events.append((m[1], fields))
    return events


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


def run_workload(inst: Path, rng: random.Random) -> None:
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
        if "percpu_create_chunk" in (inst / "trace").read_text():
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


def record(tmp_name: str, rng: random.Random) -> str:
    inst = TRACEFS / "instances" / tmp_name
    inst.mkdir()
    try:
        (inst / "options/hash-ptr").write_text("0")
        (inst / "buffer_size_kb").write_text("8192")
        (inst / "events/percpu/enable").write_text("1")
        run_workload(inst, rng)
        (inst / "events/percpu/enable").write_text("0")
        return (inst / "trace").read_text()
    finally:
        inst.rmdir()


def test_replay_into_fresh_chunks_matches_kernel_offsets() -> None:
    text = record(f"pcpu-bpf-replay-{os.getpid()}", random.Random(13))
    assert "overwritten" not in text.split("#\n", 1)[0], "trace buffer overflowed"
    chunks: dict[str, Chunk] = {}
    compared = mismatched = 0
    for name, f in parse_trace(text):
        base = f.get("base_addr")
        if name == "percpu_create_chunk":
            chunks[base] = Chunk(CONFIG_L.unit_pages, int(base, 16), GlobalCounters())
        elif name == "percpu_destroy_chunk":
            chunks.pop(base, None)
        elif base in chunks and name == "percpu_alloc_percpu":
            chunk = chunks[base]
            bits, align = int(f["size"]) // 4, int(f["align"]) // 4
            # The kernel already chose this chunk; population is not modelled here.
            start = chunk.find_block_fit(bits, align, False)
            off = chunk.alloc_area(bits, align, start) if start >= 0 else -1
            compared += 1
            mismatched += off != int(f["off"])
        elif base in chunks and name == "percpu_free_percpu":
            chunks[base].free_area(int(f["off"]))
    assert compared >= 500, f"only {compared} allocations landed in new chunks"
    assert mismatched == 0, f"{mismatched} of {compared} offsets differ from the kernel's"
