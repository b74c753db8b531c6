"""The percpu tracepoints as this kernel defines them: tracefs format files -> field order.

A raw tracepoint program sees the tracepoint's arguments as u64s in TP_PROTO order, and for
the five percpu events the format file lists its fields in that same order, before and after
5.19 (include/trace/events/percpu.h). So a field's raw argument index is its position among
the event's own (non-``common_``) fields, read from the live kernel, never assumed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pcpu_bpf.errors import BackendUnavailable
from pcpu_bpf.model.events import ALL_FIELDS, TRACEPOINTS

TRACEFS_CANDIDATES: tuple[str, ...] = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNT_FIX = "mount -t tracefs nodev /sys/kernel/tracing"

# Fields the programs cannot do without; every other field is optional.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "percpu_alloc_percpu": ("reserved", "is_atomic", "size", "base_addr", "off", "ptr"),
    "percpu_free_percpu": ("ptr",),
    "percpu_alloc_percpu_fail": ("reserved", "is_atomic", "size"),
    "percpu_create_chunk": ("base_addr",),
    "percpu_destroy_chunk": ("base_addr",),
}
# Fields the programs read when the kernel has them; without them the output degrades.
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"percpu_alloc_percpu": ("call_site", "bytes_alloc")}

# The recorder (record.bpf.c) keeps every field: these it cannot do without (every
# kernel since 4.14 has them), and OPTIONAL_FIELDS' ones and gfp_flags when there.
RECORDER_FIELDS: dict[str, tuple[str, ...]] = {
    "percpu_alloc_percpu": ("reserved", "is_atomic", "size", "align", "base_addr", "off", "ptr"),
    "percpu_free_percpu": ("base_addr", "off", "ptr"),
    "percpu_alloc_percpu_fail": ("reserved", "is_atomic", "size", "align"),
    "percpu_create_chunk": ("base_addr",),
    "percpu_destroy_chunk": ("base_addr",),
}
RECORDER_OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "percpu_alloc_percpu": ("call_site", "bytes_alloc", "gfp_flags")
}

# "field:void __seg_gs * ptr;" / "field:char comm[16];" / "field:__data_loc char[] name;"
_FIELD_RE = re.compile(r"^\s*field:(?P<decl>[^;]*);")
_NAME_RE = re.compile(r"(?P<name>\w+)\s*(?:\[[^\]]*\])?\s*$")


def parse_format(text: str) -> tuple[str, ...]:
    """Names of an event's own fields, in format-file (= TP_PROTO) order."""
    names = []
    for line in text.splitlines():
        m = _FIELD_RE.match(line)
        if not m:
            continue
        n = _NAME_RE.search(m["decl"])
        if n and not n["name"].startswith("common_"):
            names.append(n["name"])
    return tuple(names)


def find_tracefs(candidates: Sequence[str | Path] = TRACEFS_CANDIDATES) -> Path:
    """The first mounted tracefs (a directory with ``events/``), else BackendUnavailable."""
    for c in candidates:
        try:
            if (Path(c) / "events").is_dir():
                return Path(c)
        except PermissionError:
            raise BackendUnavailable(
                f"cannot read tracefs at {c}: run as root or grant CAP_DAC_READ_SEARCH"
            ) from None
    where = " or ".join(str(c) for c in candidates)
    raise BackendUnavailable(f"tracefs is not mounted at {where}: run `{MOUNT_FIX}`")


@dataclass(frozen=True, slots=True)
class TracepointLayout:
    """The field order of each percpu tracepoint on one kernel."""

    fields: Mapping[str, tuple[str, ...]]

    def missing_optional(self) -> list[tuple[str, str]]:
        """(event, field) pairs the kernel lacks among those the profiler knows."""
        return [k for k, ok in self.fields_available().items() if not ok]

    def fields_available(self) -> dict[tuple[str, str], bool]:
        """Every field of the 6.18 events (pcpu_bpf.model.events) -> present on this kernel."""
        return {(event, name): name in self.fields[event] for event, name in ALL_FIELDS}

    def check_required(self, required: Mapping[str, tuple[str, ...]] = REQUIRED_FIELDS) -> None:
        """BackendUnavailable naming the first field the programs need and cannot get."""
        for event, needed in required.items():
            for field in needed:
                if field not in self.fields[event]:
                    raise BackendUnavailable(
                        f"tracepoint percpu:{event} has no field {field!r} "
                        f"(fields: {', '.join(self.fields[event])}): this kernel is unsupported"
                    )


def read_layout(tracefs_root: str | Path | None = None) -> TracepointLayout:
    """Read the five percpu format files; a missing tracefs or tracepoint is BackendUnavailable."""
    root = find_tracefs() if tracefs_root is None else find_tracefs([tracefs_root])
    out: dict[str, tuple[str, ...]] = {}
    for event in TRACEPOINTS:
        path = root / "events" / "percpu" / event / "format"
        try:
            # errors="replace": stray bytes make no field, never a UnicodeDecodeError.
            out[event] = parse_format(path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            raise BackendUnavailable(
                f"tracepoint percpu:{event} not found ({path}): the kernel needs "
                "CONFIG_TRACEPOINTS and the percpu events (Linux >= 4.14)"
            ) from None
        except PermissionError:
            raise BackendUnavailable(
                f"cannot read {path}: run as root or grant CAP_DAC_READ_SEARCH"
            ) from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {path}: {exc.strerror}") from None
    return TracepointLayout(out)
