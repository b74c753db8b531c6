"""Reading recordings: tracefs text traces and the JSON Lines format, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trace_text import simulated_trace, trace_text

from pcpu_bpf.errors import RecordingError
from pcpu_bpf.model.events import (
    GFP_BPF_MAP,
    GFP_KERNEL,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuFree,
)
from pcpu_bpf.recording import (
    FORMAT_JSONL,
    FORMAT_TRACEFS,
    RecordedEvent,
    RecordingHeader,
    parse_recording,
    read_recording,
)
from pcpu_bpf.recording.gfp import FLAG_NAMES, format_gfp, parse_gfp
from pcpu_bpf.recording.jsonl import end_line, event_line, header_line, lost_line, parse_jsonl
from pcpu_bpf.sim.geometry import CONFIG_S

TRACES = Path(__file__).parent / "fixtures" / "traces"
ALLOC = (
    "  bpftool-4242  [001] .....  1000.000001: percpu_alloc_percpu: call_site=mm_init+0x2bf/0x4a0"
    " reserved=0 is_atomic=0 size=16 align=8 base_addr=ffffe8ffffc00000 off=64"
    " ptr=000060795baff1c0 bytes_alloc=64 gfp_flags=GFP_KERNEL"
)
FREE = (
    "  kworker/u8:6-18772 [000] d..11  1000.000002: percpu_free_percpu:"
    " base_addr=ffffe8ffffc00000 off=64 ptr=000060795baff1c0"
)


# ---- tracefs text ---------------------------------------------------------------------


def test_a_live_trace_with_real_pointers() -> None:
    rec = read_recording(TRACES / "live-6.18.txt")
    assert rec.format == FORMAT_TRACEFS and not rec.hashed_pointers and rec.lost == 0
    first = rec.events[0]
    assert first.event == PercpuAlloc(
        call_site=None,
        reserved=False,
        is_atomic=False,
        size=8,
        align=8,
        base_addr=0xFFFFE8FFFFC00000,
        off=33216,
        ptr=0x60795BAFF1C0,
        bytes_alloc=32,
        gfp_flags=GFP_BPF_MAP,
    )
    assert (first.line, first.cpu, first.timestamp, first.pid, first.comm) == (
        13,
        1,
        4656.373263,
        30529,
        "python",
    )
    assert first.call_site_text == "bpf_map_alloc_percpu+0x59/0x130"
    frees = [e for e in rec.events if isinstance(e.event, PercpuFree)]
    assert len(frees) == 28 and frees[0].comm == "kworker/u8:6"


def test_a_live_trace_with_hashed_pointers() -> None:
    rec = read_recording(TRACES / "live-6.18-hashed.txt")
    assert rec.hashed_pointers
    assert all(e.event.base_addr < 1 << 32 for e in rec.events)  # type: ignore[union-attr]


def test_trace_pipe_lines_tgid_column_no_irq_info_and_other_events() -> None:
    text = "\n".join(
        [
            "CPU:1 [LOST 17 EVENTS]",
            "  bpftool-4242  (   4240) [001] 1000.000001: percpu_create_chunk: "
            "base_addr=ffffe8ffffa00000",
            "  <idle>-0  [000] d.h1. 1000.000002: sched_switch: prev_comm=x prev_pid=1",
            ALLOC.replace("mm_init+0x2bf/0x4a0", "nf_ct_ext_add+0x12/0x50 [nf_conntrack]"),
            ALLOC.replace("GFP_KERNEL", "GFP_ATOMIC|__GFP_NOWARN|0x40000000").replace(
                "call_site=mm_init+0x2bf/0x4a0", "call_site=0xffffffffc0de0000"
            ),
            "  a-b-c-77  [000] .....  1000.000003: percpu_alloc_percpu_fail: reserved=1 "
            "is_atomic=1 size=32768 align=4096",
        ]
    )
    rec = parse_recording(text)
    assert rec.lost == 17 and rec.skipped_lines == 1
    create, mod, hexsite, fail = rec.events
    assert create.event == PercpuCreateChunk(0xFFFFE8FFFFA00000)
    assert (create.tgid, create.line) == (4240, 2)
    assert mod.call_site_text == "nf_ct_ext_add+0x12/0x50 [nf_conntrack]" and mod.line == 4
    assert isinstance(hexsite.event, PercpuAlloc)
    assert hexsite.event.call_site == 0xFFFFFFFFC0DE0000
    assert hexsite.event.gfp_flags == 0x820 | 0x2000 | 0x40000000
    assert fail.event == PercpuAllocFail(True, True, 32768, 4096) and fail.comm == "a-b-c"


def test_a_wrapped_ring_buffer_keeps_what_all_cpus_have() -> None:
    text = "\n".join(
        [
            "# entries-in-buffer/entries-written: 3/40   #P:2",
            FREE,  # CPU 0 only: CPU 1's events of this time were overwritten
            "##### CPU 1 buffer started ####",
            ALLOC,
            FREE,
        ]
    )
    rec = parse_recording(text)
    assert (rec.overwritten, rec.lost, rec.left_out) == (37, 0, 1)
    assert [e.line for e in rec.events] == [4, 5]


def test_kernels_before_5_19_have_no_call_site_bytes_alloc_or_gfp() -> None:
    old = (
        "  bpftool-4242  [001] .....  1000.000001: percpu_alloc_percpu: reserved=0 "
        "is_atomic=0 size=16 align=8 base_addr=ffffe8ffffc00000 off=64 ptr=000060795baff1c0"
    )
    (e,) = parse_recording(old).events
    assert isinstance(e.event, PercpuAlloc)
    assert (e.event.call_site, e.event.bytes_alloc, e.event.gfp_flags) == (None, None, None)


def test_gfp_names_round_trip() -> None:
    for name, bits in FLAG_NAMES:
        assert parse_gfp(format_gfp(bits)) == bits, name
    assert format_gfp(GFP_BPF_MAP) == "GFP_USER|__GFP_NOWARN|__GFP_ACCOUNT"
    assert (format_gfp(0), parse_gfp("none"), parse_gfp("GFP_KERNEL")) == ("none", 0, GFP_KERNEL)
    with pytest.raises(ValueError, match="__GFP_BOGUS"):
        parse_gfp("GFP_KERNEL|__GFP_BOGUS")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello world", "line 1: not a tracefs trace line"),
        (ALLOC + "\n" + "garbage", "line 2: not a tracefs trace line"),
        (
            "\n\n" + ALLOC.replace("size=16", "size=sixteen"),
            "line 3: percpu_alloc_percpu: bad size",
        ),
        (ALLOC.replace(" off=64", ""), "line 1: percpu_alloc_percpu has no off="),
        (ALLOC.replace("off=64", "off=-4"), "bad off"),
        (ALLOC.replace("reserved=0", "reserved=2"), "bad reserved"),
        (
            ALLOC.replace("base_addr=ffffe8ffffc00000", "base_addr=(____ptrval____)"),
            "bad base_addr",
        ),
        (ALLOC.replace("ptr=000060795baff1c0", "ptr=1ffffe8ffffc000000"), "bad ptr"),
        (ALLOC.replace("GFP_KERNEL", "GFP_WHATEVER"), "bad gfp_flags"),
        (FREE.replace("base_addr=", "base_addr "), "line 1: not a field=value list"),
    ],
)
def test_a_malformed_trace_is_one_line_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(RecordingError, match=message.replace("(", r"\(")) as info:
        parse_recording(text)
    assert "\n" not in str(info.value)


def test_unreadable_or_binary_files(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot read"):
        read_recording(tmp_path / "nope.txt")
    binary = tmp_path / "x.bin"
    binary.write_bytes(ALLOC.encode() + b"\n\xff\xfe\n")
    with pytest.raises(RecordingError, match="line 2: not UTF-8"):
        read_recording(binary)


# ---- JSON Lines -----------------------------------------------------------------------

HEADER = RecordingHeader(
    version=1,
    kernel="6.18.0",
    started="2026-11-30T12:00:00+00:00",
    clock="boot",
    geometry={
        "nr_possible_cpus": 4,
        "nr_units": 4,
        "unit_size": 65536,
        "static_size": 40000,
        "reserved_size": 4096,
        "dyn_size": 21440,
        "atom_size": 4096,
        "alloc_size": 65536,
        "memcg_kmem": True,
    },
    percpu_stats="Percpu Memory Statistics\n",
)


def jsonl(records: list[RecordedEvent], *, extra: list[str] = ()) -> str:  # type: ignore[assignment]
    return "\n".join([header_line(HEADER), *map(event_line, records), *extra]) + "\n"


def test_jsonl_round_trip_of_every_kind_of_event() -> None:
    events = simulated_trace("chunk-churn", CONFIG_S, seed=2, before=100, during=600)
    events.append(PercpuAllocFail(False, True, 64, 8))
    kinds = {type(e) for e in events}
    assert len(kinds) == 5  # alloc, free, fail, create, destroy all there
    records = [
        RecordedEvent(
            line=n + 2,
            event=e,
            cpu=n % 4,
            timestamp=n / 1000,
            pid=100 + n,
            tgid=100,
            comm="worker",
            cgroup=7,
            call_site_text=f"{e.call_site:#x}" if isinstance(e, PercpuAlloc) else None,
        )
        for n, e in enumerate(events)
    ]
    text = jsonl(
        records,
        extra=[lost_line(3, cpu=1), end_line(events=len(records), lost=3, reason="duration")],
    )
    rec = parse_recording(text)
    assert rec.format == FORMAT_JSONL and rec.header == HEADER
    assert list(rec.events) == records
    assert rec.lost == 3 and rec.end["reason"] == "duration"


def test_jsonl_nulls_where_the_kernel_has_no_field() -> None:
    e = PercpuAlloc(None, False, False, 8, 8, 0xFFFF0000, 8, 0x1000, None, None)
    (back,) = parse_recording(jsonl([RecordedEvent(2, e)])).events
    assert back.event == e and (back.cpu, back.pid, back.comm, back.cgroup) == (None,) * 4


def _obj(**fields: object) -> str:
    base: dict[str, object] = {
        "type": "percpu_free_percpu",
        "ts": 1,
        "cpu": 0,
        "base_addr": "0xffffe8ffffc00000",
        "off": 8,
        "ptr": "0x10",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "line 1: the file is empty"),
        (["[1, 2]"], "line 1: not a JSON object"),
        (['{"type": "header", "format": "other", "version": 1}'], "line 1: the first line must be"),
        (['{"type": "header", "format": "pcpu-bpf-recording", "version": 2}'], "version 2"),
        (['{"type": "header", "format": "pcpu-bpf-recording", "version": "1"}'], "'version' must"),
        (["HEADER", "{not json"], "line 2: not a JSON object"),
        (["HEADER", _obj(type="percpu_alloc")], "line 2: unknown line type"),
        (["HEADER", _obj(off=-8)], "line 2: 'off' must be a non-negative integer"),
        (["HEADER", _obj(off=True)], "'off' must be"),
        (["HEADER", _obj(base_addr="ffffe8")], "'base_addr' must be a hex string"),
        (["HEADER", _obj(ptr=...)], "percpu_free_percpu has no 'ptr'"),
        (["HEADER", _obj(), _obj(comm=5)], "line 3: 'comm' must be a string"),
        (["HEADER", _obj(type="percpu_alloc_percpu_fail", reserved="no")], "'reserved' must be"),
        (
            ["HEADER", end_line(events=0, lost=0, reason="x"), _obj()],
            "line 3: a line after the end",
        ),
        (["HEADER", '{"type": "lost", "count": -1}'], "'count' must be"),
    ],
)
def test_a_malformed_recording_is_one_line_naming_the_line(lines: list[str], message: str) -> None:
    text = [header_line(HEADER) if line == "HEADER" else line for line in lines]
    with pytest.raises(RecordingError, match=message) as info:
        parse_jsonl(text)
    assert "\n" not in str(info.value)


def test_a_file_starting_with_an_object_is_read_as_a_recording() -> None:
    with pytest.raises(RecordingError, match="line 2: not a JSON object"):
        parse_recording("\n" + '{"type": "header"')
    assert parse_recording("").events == ()  # an empty trace: nothing happened


def test_a_bad_header_geometry_is_named() -> None:
    bad = json.loads(header_line(HEADER))
    bad["geometry"]["unit_size"] = "64K"
    with pytest.raises(RecordingError, match="line 1: geometry 'unit_size' must be"):
        parse_recording(json.dumps(bad))


# ---- fuzz: nothing but RecordingError escapes -----------------------------------------

VALID_TRACE = trace_text(simulated_trace("chunk-churn", CONFIG_S, seed=3, before=50, during=40))
VALID_JSONL = jsonl(
    [
        RecordedEvent(n + 2, e, cpu=0, timestamp=n / 10)
        for n, e in enumerate(simulated_trace("bpf-maps", CONFIG_S, seed=3, before=50, during=40))
    ]
)


def _mutate(text: str, data: st.DataObject) -> str:
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(chars) - 1))
        op = data.draw(st.sampled_from(("replace", "delete", "insert")))
        c = data.draw(st.sampled_from(list('0123456789abcdefx-=:[]{}",. \n|_')))
        if op == "replace":
            chars[i] = c
        elif op == "delete":
            del chars[i]
        else:
            chars.insert(i, c)
    return "".join(chars)


def _parses_or_refuses(text: str) -> None:
    try:
        parse_recording(text)
    except RecordingError as exc:
        assert "\n" not in str(exc)


@given(st.text(max_size=400))
def test_fuzz_any_text(text: str) -> None:
    _parses_or_refuses(text)


@given(st.data())
def test_fuzz_mutated_traces(data: st.DataObject) -> None:
    _parses_or_refuses(_mutate(VALID_TRACE, data))


@given(st.data())
def test_fuzz_mutated_recordings(data: st.DataObject) -> None:
    _parses_or_refuses(_mutate(VALID_JSONL, data))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.sampled_from(
        [
            "percpu_alloc_percpu",
            "percpu_free_percpu",
            "percpu_alloc_percpu_fail",
            "percpu_create_chunk",
            "percpu_destroy_chunk",
            "lost",
            "end",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "ts",
                "cpu",
                "pid",
                "comm",
                "cgroup",
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
                "count",
            ]
        ),
        JSON_VALUES,
    ),
    st.dictionaries(
        st.sampled_from(["version", "geometry", "kernel", "percpu_stats"]), JSON_VALUES
    ),
)
def test_fuzz_recording_fields(
    kind: str, fields: dict[str, object], header: dict[str, object]
) -> None:
    head = json.loads(header_line(HEADER)) | header
    _parses_or_refuses(json.dumps(head) + "\n" + json.dumps({"type": kind, **fields}) + "\n")
