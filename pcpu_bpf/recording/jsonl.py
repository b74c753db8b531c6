"""The project's recording format: JSON Lines, one header line, then one event a line.

docs/recording.md is the schema. Addresses, pointers and gfp flags are hex strings (64-bit
values do not survive every JSON reader as numbers); sizes, offsets, CPUs and times are
integers. Readers of version 1 accept keys they do not know, so later writers may add
some; a line type they do not know is an error. The writer here is what a recorder
uses, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pcpu_bpf.errors import RecordingError
from pcpu_bpf.model.events import (
    TRACEPOINTS,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuFree,
)
from pcpu_bpf.recording.data import (
    EVENT_BUILDERS,
    FORMAT_JSONL,
    GEOMETRY_KEYS,
    RecordedEvent,
    Recording,
    RecordingHeader,
)

FORMAT_NAME = "pcpu-bpf-recording"
VERSION = 1
_U64 = (1 << 64) - 1


# ---- writing ------------------------------------------------------------------------


def header_line(header: RecordingHeader) -> str:
    """The first line of a recording."""
    obj: dict[str, Any] = {"type": "header", "format": FORMAT_NAME, "version": header.version}
    obj.update(
        kernel=header.kernel,
        started=header.started,
        clock=header.clock,
        geometry=dict(header.geometry) if header.geometry is not None else None,
        percpu_stats=header.percpu_stats,
    )
    return json.dumps(obj, separators=(",", ":"))


def event_line(rec: RecordedEvent) -> str:
    """One event's line; ``rec.timestamp`` is written as integer nanoseconds.

    Built with string formatting, not a dict through json.dumps: a recorder writes a
    line per event, and this is three times faster (the reader checks it all the same).
    """
    e = rec.event
    ts = "null" if rec.timestamp is None else str(round(rec.timestamp * 1e9))
    comm = "null" if rec.comm is None else json.dumps(rec.comm)
    head = (
        f'{{"type":"{_TYPE_OF[type(e)]}","ts":{ts},"cpu":{_n(rec.cpu)},"pid":{_n(rec.pid)},'
        f'"tgid":{_n(rec.tgid)},"comm":{comm},"cgroup":{_n(rec.cgroup)},'
    )
    if isinstance(e, PercpuAlloc):
        return (
            f'{head}"call_site":{_x(e.call_site)},"reserved":{_b(e.reserved)},'
            f'"is_atomic":{_b(e.is_atomic)},"size":{e.size},"align":{e.align},'
            f'"base_addr":{_x(e.base_addr)},"off":{e.off},"ptr":{_x(e.ptr)},'
            f'"bytes_alloc":{_n(e.bytes_alloc)},"gfp_flags":{_x(e.gfp_flags)}}}'
        )
    if isinstance(e, PercpuFree):
        size = "" if rec.size is None else f',"size":{rec.size}'
        return f'{head}"base_addr":{_x(e.base_addr)},"off":{e.off},"ptr":{_x(e.ptr)}{size}}}'
    if isinstance(e, PercpuAllocFail):
        return (
            f'{head}"reserved":{_b(e.reserved)},"is_atomic":{_b(e.is_atomic)},'
            f'"size":{e.size},"align":{e.align}}}'
        )
    return f'{head}"base_addr":{_x(e.base_addr)}}}'


def _n(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _x(value: int | None) -> str:
    return "null" if value is None else f'"{value:#x}"'


def _b(value: bool) -> str:
    return "true" if value else "false"


def lost_line(count: int, *, cpu: int | None = None, timestamp: float | None = None) -> str:
    """A line saying ``count`` events were lost here (the buffer was full)."""
    ts = None if timestamp is None else round(timestamp * 1e9)
    return json.dumps({"type": "lost", "ts": ts, "cpu": cpu, "count": count}, separators=(",", ":"))


def end_line(*, events: int, lost: int, reason: str, timestamp: float | None = None) -> str:
    """The last line: totals, and why recording stopped."""
    ts = None if timestamp is None else round(timestamp * 1e9)
    obj = {"type": "end", "ts": ts, "events": events, "lost": lost, "reason": reason}
    return json.dumps(obj, separators=(",", ":"))


# ---- reading ------------------------------------------------------------------------


@dataclass
class _Line:
    """One parsed line's object, with typed getters that name the line on failure."""

    number: int
    obj: Mapping[str, Any]

    def fail(self, what: str) -> RecordingError:
        return RecordingError(f"line {self.number}: {what}")

    def integer(self, key: str, *, optional: bool = False) -> int | None:
        v = self.obj.get(key)
        if v is None:
            if optional:
                return None
            raise self.fail(f"{self._type()} has no {key!r}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > _U64:
            raise self.fail(f"{key!r} must be a non-negative integer, not {_show(v)}")
        return v

    def required_int(self, key: str) -> int:
        v = self.integer(key)
        assert v is not None
        return v

    def flag(self, key: str) -> bool:
        v = self.obj.get(key)
        if not isinstance(v, bool):
            raise self.fail(f"{key!r} must be true or false, not {_show(v)}")
        return v

    def address(self, key: str, *, optional: bool = False) -> int | None:
        v = self.obj.get(key)
        if v is None:
            if optional:
                return None
            raise self.fail(f"{self._type()} has no {key!r}")
        if isinstance(v, str) and v.startswith("0x") and 2 < len(v) <= 18:
            try:
                return int(v[2:], 16)
            except ValueError:
                pass
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64:
            return v
        raise self.fail(f'{key!r} must be a hex string like "0x1f", not {_show(v)}')

    def required_address(self, key: str) -> int:
        v = self.address(key)
        assert v is not None
        return v

    def text(self, key: str) -> str | None:
        v = self.obj.get(key)
        if v is not None and not isinstance(v, str):
            raise self.fail(f"{key!r} must be a string, not {_show(v)}")
        return v

    def _type(self) -> str:
        return str(self.obj.get("type"))


@dataclass
class _Fields:
    """A line's event fields as the shared event builders read them (EventFields)."""

    line: _Line

    def address(self, key: str) -> int:
        return self.line.required_address(key)

    def integer(self, key: str) -> int:
        return self.line.required_int(key)

    def flag(self, key: str) -> bool:
        return self.line.flag(key)

    def call_site(self) -> int | None:
        return self.line.address("call_site", optional=True)

    def bytes_alloc(self) -> int | None:
        return self.line.integer("bytes_alloc", optional=True)

    def gfp_flags(self) -> int | None:
        return self.line.address("gfp_flags", optional=True)


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 30 else text[:30] + "..."


_TYPE_OF: dict[type, str] = {cls: name for name, cls in TRACEPOINTS.items()}


def _load(number: int, raw: str) -> _Line:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise RecordingError(f"line {number}: not a JSON object") from None
    if not isinstance(obj, dict):
        raise RecordingError(f"line {number}: not a JSON object")
    return _Line(number, obj)


def _header(x: _Line) -> RecordingHeader:
    if x.obj.get("type") != "header" or x.obj.get("format") != FORMAT_NAME:
        raise x.fail(
            f'the first line must be the header, {{"type": "header", "format": "{FORMAT_NAME}"}}'
        )
    version = x.integer("version")
    if version != VERSION:
        raise x.fail(f"recording version {version}: this pcpu-bpf reads version {VERSION}")
    geometry = x.obj.get("geometry")
    if geometry is not None:
        if not isinstance(geometry, dict):
            raise x.fail("'geometry' must be an object")
        for key, kind in GEOMETRY_KEYS.items():
            v = geometry.get(key)
            ok = (
                isinstance(v, bool)
                if kind is bool
                else (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64)
            )
            if not ok:
                want = "true or false" if kind is bool else "a non-negative integer"
                raise x.fail(f"geometry {key!r} must be {want}, not {_show(v)}")
        geometry = {k: geometry[k] for k in GEOMETRY_KEYS}
    return RecordingHeader(
        version=version,
        kernel=x.text("kernel"),
        started=x.text("started"),
        clock=x.text("clock"),
        geometry=geometry,
        percpu_stats=x.text("percpu_stats"),
    )


def parse_jsonl(lines: Iterable[str]) -> Recording:
    """Parse a recording; the first bad line is a RecordingError naming it."""
    header: RecordingHeader | None = None
    events: list[RecordedEvent] = []
    lost = 0
    end: dict[str, Any] | None = None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        x = _load(number, raw)
        if header is None:
            header = _header(x)
            continue
        if end is not None:
            raise x.fail("a line after the end line")
        kind = x.obj.get("type")
        if kind == "lost":
            lost += x.required_int("count")
            continue
        if kind == "end":
            end = dict(x.obj)
            continue
        build = EVENT_BUILDERS.get(kind) if isinstance(kind, str) else None
        if build is None:
            raise x.fail(f"unknown line type {_show(kind)}")
        event = build(_Fields(x))
        ts = x.integer("ts", optional=True)
        events.append(
            RecordedEvent(
                line=number,
                event=event,
                cpu=x.integer("cpu", optional=True),
                timestamp=None if ts is None else ts / 1e9,
                pid=x.integer("pid", optional=True),
                tgid=x.integer("tgid", optional=True),
                comm=x.text("comm"),
                cgroup=x.integer("cgroup", optional=True),
                call_site_text=x.text("call_site") if kind == "percpu_alloc_percpu" else None,
                size=x.integer("size", optional=True) if kind == "percpu_free_percpu" else None,
            )
        )
    if header is None:
        raise RecordingError("line 1: the file is empty: no header line")
    return Recording(
        format=FORMAT_JSONL,
        events=tuple(events),
        header=header,
        lost=lost,
        end=end or {},
    )
