"""The recorder's cost per event beside the aggregating programs, for docs/benchmarks.md.

Run as root from the repository:  .venv/bin/python benchmarks/record_overhead.py

With kernel.bpf_stats_enabled=1, attach at once the profiler (pcpu.bpf.c), the recorder
(record.bpf.c, its ring buffer drained into a JSON Lines file in a thread, as
`pcpu-bpf record` does) and a do-nothing program (noop.bpf.c); create and close per-CPU
array maps; per program, run_time_ns / run_cnt over each repetition, median over the
repetitions. Then the recorder alone: how many events per second the drain and the JSON
writing keep up with, and whether any was lost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bpf_overhead import STATS, cost_rounds, map_churn, noop, profiler, prog_sample

from pcpu_bpf.bpf.recorder import Recorder
from pcpu_bpf.cli.record import _line
from pcpu_bpf.kernel.procfs import read_possible_cpus


class Drainer(threading.Thread):
    """Drains the recorder's ring into a file until stopped, counting what it wrote."""

    def __init__(self, recorder: Recorder, path: Path) -> None:
        super().__init__(daemon=True)
        self.recorder, self.path = recorder, path
        self.written = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.path.open("w") as out:
            while not self.stopping.is_set():
                self.recorder.wait(0.05)
                for r in self.recorder.drain():
                    self.written += 1
                    out.write(_line(self.written, r) + "\n")


def settle(drainer: Drainer) -> None:
    """Until the kworker has freed the closed maps and the drain has caught up."""
    last = -1
    while last != drainer.written:
        last = drainer.written
        time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--maps", type=int, default=2000, help="maps per repetition (16 each)")
    # Default: a file in a fresh private directory (root writes it; no fixed name in /tmp).
    ap.add_argument("--out", default=None, help="where the recording goes")
    ap.add_argument(
        "--recorder-first",
        action="store_true",
        help="attach the recorder before the profiler (programs on one tracepoint run in "
        "the order they were attached, and the first pays more: run both orders)",
    )
    args = ap.parse_args()
    if args.out is None:
        args.out = str(Path(tempfile.mkdtemp(prefix="pcpu-record-bench-")) / "recording.jsonl")
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    cpus = read_possible_cpus()
    previous = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        with ExitStack() as stack:
            if args.recorder_first:
                rec = stack.enter_context(Recorder(nr_possible_cpus=cpus))
            p = stack.enter_context(profiler())
            n = stack.enter_context(noop())
            if not args.recorder_first:
                rec = stack.enter_context(Recorder(nr_possible_cpus=cpus))
            drainer = Drainer(rec, Path(args.out))
            drainer.start()
            rec_fds = {"alloc": rec.program_fds["rec_alloc"], "free": rec.program_fds["rec_free"]}
            tools = {"pcpu-bpf": p, "do-nothing": n, "recorder": lambda: prog_sample(rec_fds)}

            def one_round() -> None:
                map_churn(args.maps)
                settle(drainer)

            rounds = cost_rounds(tools, args.reps, one_round)
            costs = {f"{t} {ev}": v for t, evs in rounds.items() for ev, v in evs.items()}
            drainer.stopping.set()
            drainer.join()
            lost = sum(rec.lost())
        print("ns per event, median of", args.reps)
        for key, values in costs.items():
            print(f"  {key:<20} {statistics.median(values):8.0f}")
        print(f"recorded {drainer.written} events, {lost} lost")
    finally:
        STATS.write_text(previous)
    # The drain and the JSON writing alone: a burst of maps, as fast as they come.
    with Recorder(nr_possible_cpus=cpus) as rec:
        drainer = Drainer(rec, Path(args.out))
        drainer.start()
        t0 = time.perf_counter()
        map_churn(args.maps * 5)
        settle(drainer)
        elapsed = time.perf_counter() - t0
        drainer.stopping.set()
        drainer.join()
        lost = sum(rec.lost())
        size = Path(args.out).stat().st_size
    print(
        f"burst: {drainer.written} events in {elapsed:.2f} s (with the settle waits), "
        f"{lost} lost, {size / max(drainer.written, 1):.0f} bytes per event in the file"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
