"""`pcpu-bpf record`: every percpu event of the live kernel into a JSON Lines recording."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

import click

from pcpu_bpf.backends import bpf_failure, first_line
from pcpu_bpf.bpf.recorder import RawRecord, Recorder
from pcpu_bpf.cli.params import Seconds
from pcpu_bpf.errors import BackendUnavailable, PcpuError, ProgramLoadError
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats, render_percpu_stats
from pcpu_bpf.kernel.procfs import kernel_release, read_possible_cpus
from pcpu_bpf.model.layout import DEFAULT_RING_BYTES
from pcpu_bpf.recording import RecordedEvent, RecordingHeader
from pcpu_bpf.recording.jsonl import VERSION, end_line, event_line, header_line, lost_line
from pcpu_bpf.sim.host import host_geometry

DEFAULT_OUTPUT = "pcpu-recording.jsonl"
DEFAULT_MAX_EVENTS = 10_000_000
DEFAULT_MAX_BYTES = 1 << 30
# How long one wait for the ring lasts at most: the bounds are checked this often.
POLL_SECONDS = 0.1

EPILOG = f"""\b
The file: one header line (kernel, geometry, percpu_stats at the start), then one line
per event, "lost" lines where the ring buffer was full, and an "end" line
(docs/recording.md). It is written as FILE.partial and renamed when complete.

\b
Examples:
  sudo pcpu-bpf record --duration 30 -o day1.jsonl
  sudo pcpu-bpf record --max-events 100000 -o - | head
  pcpu-bpf replay day1.jsonl --cpus 64           # what if it had 64 CPUs
  (defaults: {DEFAULT_MAX_EVENTS:,} events, {DEFAULT_MAX_BYTES >> 20} MiB)
"""


def _boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class _Stop(Exception):
    """SIGTERM: end the recording as complete, like Ctrl-C."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _header() -> RecordingHeader:
    """What the header says about the machine, read just after the programs attached."""
    try:
        geometry = dataclasses.asdict(host_geometry()[0])
    except (OSError, PcpuError):
        geometry = None
    try:
        stats = render_percpu_stats(read_percpu_stats())
    except (OSError, PcpuError):
        stats = None
    return RecordingHeader(
        version=VERSION,
        kernel=kernel_release(),
        started=datetime.now().astimezone().isoformat(timespec="seconds"),
        clock="boottime",
        geometry=geometry,
        percpu_stats=stats,
    )


def _line(n: int, r: RawRecord) -> str:
    return event_line(
        RecordedEvent(
            line=n,
            event=r.event,
            cpu=r.cpu,
            timestamp=r.ts_ns / 1e9,
            pid=r.pid,
            tgid=r.tgid,
            comm=r.comm,
            cgroup=r.cgroup,
        )
    )


@click.command("record", epilog=EPILOG)
@click.option(
    "--duration", type=Seconds(), default=10.0, show_default=True, help="Record this long."
)
@click.option(
    "-o",
    "--output",
    default=DEFAULT_OUTPUT,
    show_default=True,
    metavar="FILE",
    help="Where the recording goes ('-': standard output, as it comes).",
)
@click.option(
    "--max-events",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_EVENTS,
    metavar="N",
    help="Stop after N events.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=4096),
    default=DEFAULT_MAX_BYTES,
    metavar="B",
    help="Stop before the file passes B bytes.",
)
@click.option(
    "--ring-size",
    type=click.IntRange(min=4096),
    default=DEFAULT_RING_BYTES,
    show_default=True,
    metavar="B",
    help="The BPF ring buffer's bytes (a power of two of pages); events that find it "
    "full are counted as lost and written down.",
)
@click.option("--bpf-dir", type=click.Path(file_okay=False), hidden=True)
def record_command(
    duration: float,
    output: str,
    max_events: int,
    max_bytes: int,
    ring_size: int,
    bpf_dir: str | None,
) -> None:
    """Record every percpu event of the live kernel (needs root) into a JSON Lines file.

    Every allocation, free, failure, chunk creation and destruction, with all its
    fields, the CPU, a boot-clock timestamp, the task and its cgroup, through a BPF ring
    buffer. Stops at --duration, --max-events or --max-bytes, or on Ctrl-C; the last
    line says why and how many events were lost. `pcpu-bpf replay FILE` replays it.
    """
    try:
        cpus = read_possible_cpus()
        recorder = Recorder(nr_possible_cpus=cpus, ring_bytes=ring_size, bpf_dir=bpf_dir)
    except (BackendUnavailable, ProgramLoadError) as exc:
        hint = "" if "doctor" in str(exc) else "; run `pcpu-bpf doctor` for the fix"
        raise click.ClickException(f"{bpf_failure(exc)}: {first_line(exc)}{hint}") from exc
    except (OSError, PcpuError) as exc:
        raise click.ClickException(first_line(exc)) from exc
    to_stdout = output == "-"
    partial = Path(f"{output}.partial")
    with recorder:
        try:
            out: TextIO = sys.stdout if to_stdout else partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {partial}: {exc.strerror}") from exc
        try:
            events, lost, reason = _record(recorder, out, duration, max_events, max_bytes)
        except BaseException:
            if not to_stdout:
                out.close()
                partial.unlink(missing_ok=True)  # nothing half-written stays behind
            raise
        if not to_stdout:
            out.close()
            os.replace(partial, output)
    where = "standard output" if to_stdout else output
    click.echo(
        f"pcpu-bpf record: {events:,} events to {where}, {lost:,} lost; stopped: {reason}",
        err=True,
    )


def _record(
    recorder: Recorder, out: TextIO, duration: float, max_events: int, max_bytes: int
) -> tuple[int, int, str]:
    """Write the header, the events and the end line; (events, lost, why it stopped)."""
    header = header_line(_header()) + "\n"
    out.write(header)
    out.flush()  # the header says the programs are attached: readers wait for it
    written = len(header.encode())
    events = 0
    seen_lost = [0] * recorder.nr_possible_cpus
    deadline = time.monotonic() + duration
    reason = "duration"

    def write_lost() -> int:
        nonlocal written
        now = recorder.lost()
        for cpu, (before, after) in enumerate(zip(seen_lost, now, strict=True)):
            if after > before:
                line = lost_line(after - before, cpu=cpu, timestamp=_boot_ns() / 1e9) + "\n"
                out.write(line)
                written += len(line.encode())
                seen_lost[cpu] = after
        return sum(now)

    with _sigterm_stops():
        try:
            while reason == "duration":
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                recorder.wait(min(left, POLL_SECONDS))
                for r in recorder.drain():
                    line = _line(events + 2, r) + "\n"
                    size = len(line.encode())
                    if written + size > max_bytes:
                        reason = "max-bytes"
                        break
                    out.write(line)
                    written += size
                    events += 1
                    if events >= max_events:
                        reason = "max-events"
                        break
                write_lost()
                out.flush()  # a reader of the file or the pipe sees each batch as it comes
        except (KeyboardInterrupt, _Stop):
            reason = "interrupted"
    lost = write_lost()
    out.write(end_line(events=events, lost=lost, reason=reason, timestamp=_boot_ns() / 1e9) + "\n")
    out.flush()
    return events, lost, reason
