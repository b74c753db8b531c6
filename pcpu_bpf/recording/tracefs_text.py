"""A tracefs text trace of the percpu events, as ``trace`` or ``trace_pipe`` prints it.

One event a line: ``TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: field=value ...``, with the
optional ``(TGID)`` column and without the flags column when irq-info is off. Pointers
are ``%p``: real addresses with hash-ptr off, 32-bit hashes otherwise. The call site is
``%pS``, a symbol (``func+0x59/0x130 [module]``) or a hex address, and gfp_flags are
names (gfp.py). Comment lines are skipped, except that ``entries-in-buffer/
entries-written`` tells how many of the oldest events were overwritten before the
first one kept; ``CPU:N [LOST M EVENTS]`` lines (trace_pipe) are events lost on the
way. Other events in the same trace are skipped.

A ``trace`` whose ring buffer wrapped has lost its oldest events, each CPU's up to a
different point, and marks where a CPU's surviving events start (``##### CPU N buffer
started ####``). Before the last such mark some CPU's events are missing, so those
events are left out (counted in ``Recording.left_out``): what remains is complete.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from pcpu_bpf.errors import RecordingError
from pcpu_bpf.model.events import (
    Event,
)
from pcpu_bpf.recording.data import (
    EVENT_BUILDERS,
    FORMAT_TRACEFS,
    EventFields,
    RecordedEvent,
    Recording,
)
from pcpu_bpf.recording.gfp import parse_gfp

_LINE = re.compile(
    r"^\s*(?P<task>.*)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[-\d]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>\S{4,5})\s+)?(?P<ts>\d+(?:\.\d+)?):\s+(?P<name>\w+):\s?(?P<fields>.*)$"
)
_LOST = re.compile(r"^CPU:(?P<cpu>\d+) \[LOST (?P<n>\d+) EVENTS\]$")
_ENTRIES = re.compile(r"entries-in-buffer/entries-written:\s*(?P<kept>\d+)/(?P<written>\d+)")
_BUFFER_STARTED = re.compile(r"^#{3,} CPU \d+ buffer started #{3,}$")
# a field starts where a word and "=" follow a space: "[module]" stays in call_site
_FIELD_SPLIT = re.compile(r" (?=\w+=)")
_HASHED_LIMIT = 1 << 32


def parse_tracefs_text(lines: Iterable[str]) -> Recording:
    """Parse a trace; a line that is none of the shapes above is a RecordingError."""
    events: list[RecordedEvent] = []
    lost = overwritten = skipped = left_out = 0
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if _BUFFER_STARTED.match(line.strip()):
            left_out += len(events)
            events.clear()
            continue
        if line.startswith("#"):
            if m := _ENTRIES.search(line):
                overwritten += max(int(m["written"]) - int(m["kept"]), 0)
            continue
        if m := _LOST.match(line.strip()):
            lost += int(m["n"])
            continue
        m = _LINE.match(line)
        if m is None:
            raise RecordingError(f"line {number}: not a tracefs trace line: {_cut(line)}")
        build = EVENT_BUILDERS.get(m["name"])
        if build is None:
            skipped += 1
            continue
        fields = _fields(m["fields"], number)
        event = _build(build, m["name"], fields, number)
        call_site = fields.get("call_site") if m["name"] == "percpu_alloc_percpu" else None
        tgid = m["tgid"]
        events.append(
            RecordedEvent(
                line=number,
                event=event,
                cpu=int(m["cpu"]),
                timestamp=float(m["ts"]),
                pid=int(m["pid"]),
                tgid=int(tgid) if tgid and tgid.lstrip("-").isdigit() and int(tgid) >= 0 else None,
                comm=m["task"].strip() or None,
                call_site_text=call_site,
            )
        )
    bases = [getattr(e.event, "base_addr", None) for e in events]
    known = [b for b in bases if b is not None]
    return Recording(
        format=FORMAT_TRACEFS,
        events=tuple(events),
        lost=lost,
        hashed_pointers=bool(known) and all(b < _HASHED_LIMIT for b in known),
        skipped_lines=skipped,
        left_out=left_out,
        overwritten=overwritten,
    )


def _cut(line: str, width: int = 60) -> str:
    line = line.strip()
    return repr(line if len(line) <= width else line[:width] + "...")


def _fields(text: str, number: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in _FIELD_SPLIT.split(text.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.isidentifier():
            raise RecordingError(f"line {number}: not a field=value list: {_cut(text)}")
        out[key] = value
    return out


class _Fields:
    """Typed access to one line's fields; a bad or missing value names the line."""

    def __init__(self, name: str, fields: dict[str, str], number: int) -> None:
        self.name, self.fields, self.number = name, fields, number

    def _raw(self, key: str) -> str:
        if key not in self.fields:
            raise RecordingError(f"line {self.number}: {self.name} has no {key}=")
        return self.fields[key]

    def _bad(self, key: str) -> RecordingError:
        return RecordingError(
            f"line {self.number}: {self.name}: bad {key} value {_cut(self.fields[key], 30)}"
        )

    def integer(self, key: str, *, minimum: int = 0) -> int:
        raw = self._raw(key)
        if not re.fullmatch(r"-?\d{1,20}", raw) or int(raw) < minimum:
            raise self._bad(key)
        return int(raw)

    def flag(self, key: str) -> bool:
        raw = self._raw(key)
        if raw not in ("0", "1"):
            raise self._bad(key)
        return raw == "1"

    def address(self, key: str) -> int:
        raw = self._raw(key)
        digits = raw[2:] if raw.startswith("0x") else raw
        if not re.fullmatch(r"[0-9a-fA-F]{1,16}", digits):
            raise self._bad(key)
        return int(digits, 16)

    def bytes_alloc(self) -> int | None:
        return self.integer("bytes_alloc") if "bytes_alloc" in self.fields else None

    def call_site(self) -> int | None:
        raw = self.fields.get("call_site")
        if raw is None or not re.fullmatch(r"0x[0-9a-fA-F]{1,16}", raw):
            return None  # a symbol: the text is kept beside the event
        return int(raw, 16)

    def gfp_flags(self) -> int | None:
        if "gfp_flags" not in self.fields:
            return None
        try:
            return parse_gfp(self.fields["gfp_flags"])
        except ValueError:
            raise self._bad("gfp_flags") from None


def _build(
    build: Callable[[EventFields], Event], name: str, fields: dict[str, str], number: int
) -> Event:
    return build(_Fields(name, fields, number))
