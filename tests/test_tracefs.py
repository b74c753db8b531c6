"""Tracepoint layouts from tracefs format files: field order -> raw argument index."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcpu_bpf.bpf.loader import build_cflags, program_defines
from pcpu_bpf.bpf.tracefs import find_tracefs, parse_format, read_layout
from pcpu_bpf.errors import BackendUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"

ALLOC_6_18 = (
    "call_site",
    "reserved",
    "is_atomic",
    "size",
    "align",
    "base_addr",
    "off",
    "ptr",
    "bytes_alloc",
    "gfp_flags",
)
ALLOC_5_15 = ("reserved", "is_atomic", "size", "align", "base_addr", "off", "ptr")


@pytest.mark.parametrize(
    ("version", "event", "fields"),
    [
        ("6.18", "percpu_alloc_percpu", ALLOC_6_18),
        ("6.18", "percpu_free_percpu", ("base_addr", "off", "ptr")),
        ("6.18", "percpu_alloc_percpu_fail", ("reserved", "is_atomic", "size", "align")),
        ("6.18", "percpu_create_chunk", ("base_addr",)),
        ("6.18", "percpu_destroy_chunk", ("base_addr",)),
        ("5.15", "percpu_alloc_percpu", ALLOC_5_15),
        ("5.15", "percpu_free_percpu", ("base_addr", "off", "ptr")),
        ("5.15", "percpu_alloc_percpu_fail", ("reserved", "is_atomic", "size", "align")),
    ],
)
def test_fields_in_tp_proto_order(version: str, event: str, fields: tuple[str, ...]) -> None:
    assert read_layout(FIXTURES / version).fields[event] == fields


def test_fields_available_reports_pre_5_19_gaps() -> None:
    old = read_layout(FIXTURES / "5.15")
    assert old.missing_optional() == [
        ("percpu_alloc_percpu", "call_site"),
        ("percpu_alloc_percpu", "bytes_alloc"),
        ("percpu_alloc_percpu", "gfp_flags"),
    ]
    assert all(read_layout(FIXTURES / "6.18").fields_available().values())
    old.check_required()  # degraded, still supported


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("\tfield:void __seg_gs * ptr;\toffset:56;\tsize:8;\tsigned:0;", "ptr"),
        ("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;", "comm"),
        ("\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;", "name"),
        ("\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;", None),
        ('print fmt: "x=%d", REC->x', None),
    ],
)
def test_parse_format_lines(line: str, name: str | None) -> None:
    assert parse_format(line) == ((name,) if name else ())


def test_defines_follow_the_layout() -> None:
    defines = program_defines(
        read_layout(FIXTURES / "5.15"),
        live_capacity=10,
        site_capacity=20,
        nr_possible_cpus=4,
    )
    assert defines["LIVE_CAPACITY"] == 10 and defines["SITE_CAPACITY"] == 20
    assert defines["NR_POSSIBLE_CPUS"] == 4
    assert defines["ARG_ALLOC_PTR"] == 6 and defines["ARG_FREE_PTR"] == 2
    assert defines["ARG_FAIL_SIZE"] == 2
    assert not any("CALL_SITE" in name or "BYTES_ALLOC" in name for name in defines)
    flags = build_cflags(Path("/x"), defines)
    assert flags[0] == "-I/x" and "-DARG_ALLOC_PTR=6" in flags and "-DLIVE_CAPACITY=10" in flags


def test_no_tracefs_names_the_mount_command(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="mount -t tracefs nodev /sys/kernel/tracing"):
        find_tracefs([tmp_path / "tracing", tmp_path / "debug/tracing"])


def test_missing_tracepoint(tmp_path: Path) -> None:
    (tmp_path / "events/percpu").mkdir(parents=True)
    with pytest.raises(BackendUnavailable, match="percpu:percpu_alloc_percpu not found"):
        read_layout(tmp_path)


def test_missing_required_field(tmp_path: Path) -> None:
    for event in (
        "percpu_alloc_percpu",
        "percpu_free_percpu",
        "percpu_alloc_percpu_fail",
        "percpu_create_chunk",
        "percpu_destroy_chunk",
    ):
        src = FIXTURES / "6.18/events/percpu" / event / "format"
        dst = tmp_path / "events/percpu" / event / "format"
        dst.parent.mkdir(parents=True)
        text = src.read_text()
        if event == "percpu_free_percpu":
            text = text.replace(" ptr;", " pointer;")
        dst.write_text(text)
    layout = read_layout(tmp_path)
    with pytest.raises(BackendUnavailable, match="percpu_free_percpu has no field 'ptr'"):
        layout.check_required()


def test_unreadable_tracefs_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", denied)
    with pytest.raises(BackendUnavailable, match="run as root or grant CAP_DAC_READ_SEARCH"):
        find_tracefs([tmp_path])
