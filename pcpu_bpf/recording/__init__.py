"""Recordings of the percpu events: the project's JSON Lines format and tracefs text traces.

``read_recording`` tells the two apart by the first line that is not blank: a JSON
object starts a JSON Lines recording (jsonl.py, docs/recording.md), anything else is read
as a tracefs trace (tracefs_text.py). Either way the result is a Recording (data.py).
"""

from __future__ import annotations

from pathlib import Path

from pcpu_bpf.errors import RecordingError
from pcpu_bpf.recording.data import (
    FORMAT_JSONL,
    FORMAT_TRACEFS,
    GEOMETRY_KEYS,
    RecordedEvent,
    Recording,
    RecordingHeader,
)
from pcpu_bpf.recording.jsonl import parse_jsonl
from pcpu_bpf.recording.tracefs_text import parse_tracefs_text

__all__ = [
    "FORMAT_JSONL",
    "FORMAT_TRACEFS",
    "GEOMETRY_KEYS",
    "RecordedEvent",
    "Recording",
    "RecordingError",
    "RecordingHeader",
    "parse_recording",
    "read_recording",
]


def parse_recording(text: str) -> Recording:
    """A recording or a trace from its text."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("{"):
        return parse_jsonl(lines)
    return parse_tracefs_text(lines)


def read_recording(path: str | Path) -> Recording:
    """Read ``path``; an unreadable or malformed file is a one-line RecordingError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecordingError(f"line {line}: not UTF-8 text") from None
    return parse_recording(text)
