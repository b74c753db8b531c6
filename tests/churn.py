"""A percpu workload that counts what it does (not a test): per-CPU map churn and
`unshare -n` churn, each in its own process, for the load test and the soak benchmark.

Map churn: per-CPU array maps of several value sizes (multiples of 8: array_map_alloc
asks bpf_map_alloc_percpu for round_up(value_size, 8)) and entry counts are created and
closed in a loop; each create is exactly ``entries`` percpu allocations of ``value_size``
bytes at call site bpf_map_alloc_percpu, freed later by a kworker. Netns churn:
`unshare -n true` in a loop (a network namespace allocates per-CPU counters of its own,
at many call sites). Run as a script, a churn prints its counts as one JSON line when
SIGTERM stops it or its --count is done.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# (value size, entries): small and large sizes, one map up to 4 MiB per CPU; 32 KiB
# entries are the allocator's largest and make it create and destroy chunks.
MAP_SHAPES: tuple[tuple[int, int], ...] = (
    (8, 64),
    (16, 512),
    (24, 16),
    (40, 256),
    (64, 1024),
    (256, 128),
    (1000, 37),
    (4096, 64),
    (16384, 8),
    (32768, 128),
)


@dataclass
class ChurnCounts:
    """What one churn process did."""

    kind: str
    rounds: int = 0
    allocations: int = 0  # percpu allocations made by map creates (maps only)
    requested_bytes: int = 0
    by_size: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> ChurnCounts:
        d: dict[str, Any] = json.loads(text)
        d["by_size"] = {int(k): v for k, v in d["by_size"].items()}
        return cls(**d)


_stopping = False


def _stop(signum: int, frame: object) -> None:
    # A flag, not an exception: a create is always counted once it returned.
    global _stopping
    _stopping = True


def churn_maps(count: int | None, shapes: tuple[tuple[int, int], ...] = MAP_SHAPES) -> ChurnCounts:
    """Create and close per-CPU arrays until stopped (or ``count`` maps)."""
    from pcpu_bpf.bpf import syscalls

    out = ChurnCounts("maps")
    start = time.monotonic()
    while not _stopping and (count is None or out.rounds < count):
        size, entries = shapes[out.rounds % len(shapes)]
        out.rounds += 1
        try:
            fd = syscalls.create_percpu_array(size, entries, "pcpu_churn")
        except OSError as exc:  # ENOMEM under pressure: counted as an error, not made
            if len(out.errors) < 10:
                out.errors.append(str(exc))
            continue
        out.allocations += entries
        out.requested_bytes += entries * size
        out.by_size[size] = out.by_size.get(size, 0) + entries
        syscalls.close(fd)
    out.seconds = time.monotonic() - start
    return out


def churn_netns(count: int | None) -> ChurnCounts:
    """`unshare -n true` until stopped (or ``count`` times)."""
    out = ChurnCounts("netns")
    start = time.monotonic()
    while not _stopping and (count is None or out.rounds < count):
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
        if done.returncode != 0 and len(out.errors) < 10:
            out.errors.append(done.stderr.strip())
        out.rounds += 1
    out.seconds = time.monotonic() - start
    return out


class Churn:
    """One churn process: start it, stop it, read its counts."""

    def __init__(
        self, kind: str, count: int | None = None, nice: int = 0, gated: bool = False
    ) -> None:
        args = [sys.executable, __file__, kind]
        if count is not None:
            args += ["--count", str(count)]
        if gated:
            args.append("--gated")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self.pid = self.proc.pid

    def go(self) -> None:
        """Start a gated churn."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 60.0) -> ChurnCounts:
        """SIGTERM, then its counts."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> ChurnCounts:
        """Its counts once it exits on its own."""
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"churn exited {self.proc.returncode}: {out!r}")
        return ChurnCounts.from_json(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("maps", "netns"))
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--gated", action="store_true", help="start on a line from stdin")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    if args.gated:
        sys.stdin.readline()
    counts = churn_maps(args.count) if args.kind == "maps" else churn_netns(args.count)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
