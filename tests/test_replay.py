"""Replaying recordings into the simulator: offsets checked, what-ifs, and bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trace_text import simulated_trace, trace_text

from pcpu_bpf.errors import PcpuError, RecordingError
from pcpu_bpf.kernel.percpu_stats import render_percpu_stats
from pcpu_bpf.model.events import (
    Event,
    PercpuAlloc,
    PercpuAllocFail,
    PercpuCreateChunk,
    PercpuDestroyChunk,
    PercpuFree,
)
from pcpu_bpf.recording import RecordedEvent, Recording, RecordingHeader, parse_recording
from pcpu_bpf.recording.jsonl import event_line, header_line
from pcpu_bpf.sim.allocator import Allocator
from pcpu_bpf.sim.geometry import CONFIG_L, CONFIG_S, Geometry
from pcpu_bpf.sim.replay import recorded_geometry, replay
from pcpu_bpf.sim.replay.timeline import build_timeline

CASES = [
    ("chunk-churn", CONFIG_S),
    ("chunk-churn", CONFIG_L),
    ("bpf-maps", CONFIG_S),
    ("netns-churn", CONFIG_S),
    ("atomic-pressure", CONFIG_S),
    ("memcg-churn", CONFIG_L),
]


@pytest.mark.parametrize("hashed", [False, True], ids=["real", "hashed"])
@pytest.mark.parametrize(("scenario", "geometry"), CASES, ids=lambda c: getattr(c, "name", ""))
def test_a_simulated_trace_replays_with_no_difference(
    scenario: str, geometry: Geometry, hashed: bool
) -> None:
    events = simulated_trace(scenario, geometry, seed=5, before=3000, during=4000)
    report = replay(parse_recording(trace_text(events, hashed=hashed)), geometry)
    p, r = report.placements, report.recorded
    assert (p.differ, p.conflicts, p.reordered) == (0, 0, 0)
    assert p.checked + p.unchecked + p.unchecked_atomic == r.allocations
    assert (p.chunks_created, p.chunks_destroyed) == (r.chunks_created, r.chunks_destroyed)
    if not hashed:
        assert p.pointers_differ == 0
    created = {e.base_addr for e in events if isinstance(e, PercpuCreateChunk)}
    in_new = sum(
        isinstance(e, PercpuAlloc) and not e.is_atomic and e.base_addr in created for e in events
    )
    assert p.checked <= in_new  # only allocations in chunks created during the trace


def test_enough_is_checked_where_chunks_come_and_go() -> None:
    events = simulated_trace("chunk-churn", CONFIG_S, seed=5, before=3000, during=4000)
    p = replay(parse_recording(trace_text(events)), CONFIG_S).placements
    assert p.checked > 1000 and p.bases_checked > 100
    assert p.bases_checked - p.bases_differ > 0  # the simulator's own vmalloc agrees


def recording_with_header(
    events: list[Event], geometry: Geometry, stats: str, sizes: dict[int, int] | None = None
) -> str:
    """A JSON Lines recording; ``sizes`` gives frees their size by offset."""
    header = RecordingHeader(
        version=1,
        kernel="6.18.0-test",
        geometry=dataclasses.asdict(geometry),
        percpu_stats=stats,
    )
    lines = [header_line(header)]
    for n, e in enumerate(events):
        size = (sizes or {}).get(e.off) if isinstance(e, PercpuFree) else None
        lines.append(event_line(RecordedEvent(n + 2, e, cpu=0, size=size)))
    return "\n".join(lines) + "\n"


def before_and_during(geometry: Geometry) -> tuple[list[Event], str, dict[int, int]]:
    """40 allocations of 4 KiB made before a recording that frees every other one."""
    events: list[Event] = []
    a = Allocator(geometry, balance="every:32", sink=events.append)
    held = [a.alloc(4096, 8) for _ in range(40)]
    offsets = {e.off: 4096 for e in events if isinstance(e, PercpuAlloc)}
    stats = render_percpu_stats(a.percpu_stats())
    del events[:]
    for ptr in held[::2]:
        a.free(ptr)  # type: ignore[arg-type]
    return events, stats, offsets


def test_a_recording_brings_its_geometry_and_its_start_state() -> None:
    events, stats, sizes = before_and_during(CONFIG_S)
    rec = parse_recording(recording_with_header(events, CONFIG_S, stats, sizes))
    assert recorded_geometry(rec) == CONFIG_S
    report = replay(rec, CONFIG_S, what_if=CONFIG_S.with_cpus(8))
    assert report.placements.seeds == 20 and report.placements.seed_bytes == 20 * 4096
    assert report.placements.conflicts == 0
    assert report.baseline is not None and report.what_if is not None
    # the live set at the start: the 20 freed, and the header's 20 others at the average
    assert report.baseline.start_allocations == 40
    assert report.baseline.start_bytes == 40 * 4096


def test_without_sizes_a_seed_reaches_to_the_next_known_start() -> None:
    events, stats, _ = before_and_during(CONFIG_S)
    rec = parse_recording(recording_with_header(events, CONFIG_S, stats))
    report = replay(rec, CONFIG_S, what_if=CONFIG_S)
    # each freed 4 KiB seed swallows the unseen live neighbour up to the next seed
    assert report.placements.seed_bytes > 20 * 4096
    assert report.baseline is not None and report.baseline.start_allocations == 20


def a_workload(geometry: Geometry) -> list[Event]:
    """100 allocations of 32 KiB, half freed, 200 of 4 KiB, then everything freed."""
    events: list[Event] = []
    a = Allocator(geometry, balance="eager", sink=events.append)
    big = [a.alloc(32768, 8) for _ in range(100)]
    for ptr in big[::2]:
        a.free(ptr)  # type: ignore[arg-type]
    small = [a.alloc(4096, 8) for _ in range(200)]
    for ptr in small + big[1::2]:
        a.free(ptr)  # type: ignore[arg-type]
    return events


@pytest.mark.parametrize("unit", [512 << 10, 2 << 20, 4 << 20])
def test_what_if_the_unit_size_changes_chunks_as_capacity_says(unit: int) -> None:
    rec = parse_recording(trace_text(a_workload(CONFIG_L)))
    big = max(unit, 2 << 20)
    what_if = CONFIG_L.changed(f"unit_size={unit},atom_size={big},alloc_size={big}")
    report = replay(rec, CONFIG_L, what_if=what_if)
    base, alt = report.baseline, report.what_if
    assert base is not None and alt is not None
    assert report.placements.differ == 0 and alt.failed == 0
    # 32 KiB divides every unit: the live bytes pack without a gap, so the chunks needed
    # at the peak are the peak live bytes over the unit size
    assert base.peak_live_bytes == alt.peak_live_bytes == 100 * 32768
    # (32 KiB does not fit the first chunk's 31528 bytes: all of it is in dynamic chunks)
    assert base.peak_chunks == math.ceil(base.peak_live_bytes / CONFIG_L.unit_size)
    assert alt.peak_chunks == math.ceil(alt.peak_live_bytes / unit)
    assert alt.chunks_created - alt.chunks_destroyed == base.chunks_created - base.chunks_destroyed


@pytest.mark.parametrize("cpus", [1, 4, 64])
def test_what_if_more_cpus_keeps_the_chunks_and_scales_the_memory(cpus: int) -> None:
    rec = parse_recording(trace_text(a_workload(CONFIG_L)))
    report = replay(rec, CONFIG_L, what_if=CONFIG_L.with_cpus(cpus))
    base, alt = report.baseline, report.what_if
    assert base is not None and alt is not None
    assert (alt.chunks_created, alt.chunks_destroyed, alt.peak_chunks) == (
        base.chunks_created,
        base.chunks_destroyed,
        base.peak_chunks,
    )
    ratio = alt.geometry.nr_units / CONFIG_L.nr_units
    assert alt.percpu_bytes_peak == base.percpu_bytes_peak * ratio
    assert alt.percpu_bytes_end == base.percpu_bytes_end * ratio


def test_an_alloc_traced_before_the_free_that_made_room_is_put_in_order() -> None:
    events: list[Event] = []
    a = Allocator(CONFIG_S, sink=events.append)
    first, _ = a.alloc(32768, 8), a.alloc(32768, 8)  # a new chunk, full
    third = a.alloc(24576, 8)  # the first chunk is too small: another new chunk
    a.free(third)  # type: ignore[arg-type]
    a.alloc(24576, 8)  # where the third was
    assert isinstance(events[-1], PercpuAlloc) and isinstance(events[-2], PercpuFree)
    assert (events[-1].base_addr, events[-1].off) == (events[-2].base_addr, events[-2].off)
    events[-1], events[-2] = events[-2], events[-1]  # as a racing trace may show them
    p = replay(parse_recording(trace_text(events)), CONFIG_S).placements
    assert (p.reordered, p.differ, p.conflicts, p.checked) == (1, 0, 0, 4)
    assert first is not None


def test_events_that_cannot_apply_are_counted_and_named() -> None:
    events: list[Event] = [
        PercpuCreateChunk(0xFFFFE8FFFFA00000),
        PercpuFree(0xFFFFE8FFFFA00000, 64, 0x40),  # nothing was allocated there
        PercpuDestroyChunk(0xFFFF888627A2D000),  # a boot chunk: the kernel never does this
    ]
    report = replay(parse_recording(trace_text(events)), CONFIG_L)
    assert report.placements.conflicts == 2
    assert report.placements.conflict_lines == [
        "line 14: a free at offset 64 of nothing the replay holds",
        "line 15: a destroy of a boot chunk, which the kernel never destroys",
    ]


def test_a_trace_from_bigger_units_is_refused_naming_the_line() -> None:
    events = simulated_trace("bpf-maps", CONFIG_L, seed=1, before=100, during=2000)
    with pytest.raises(RecordingError, match=r"line \d+: offset \d+ is past the 65536-byte unit"):
        replay(parse_recording(trace_text(events)), CONFIG_S)


def test_seeds_reach_to_the_next_allocation_known_beside_them() -> None:
    base = 0xFFFFE8FFFFC00000
    events: list[Event] = [
        PercpuFree(base, 0, 0),  # made before the trace
        PercpuAlloc(0, False, False, 8, 8, base, 4096, 0, 16, 0xCC0),
        PercpuFree(base, 1024, 0),  # made before: bounded by the alloc at 4096
        PercpuFree(base, 4096, 0),
        PercpuFree(base, 8192, 0),  # made before: nothing after it, at most 32 KiB
    ]
    rec = Recording("tracefs", tuple(RecordedEvent(n + 1, e) for n, e in enumerate(events)))
    (chunk,) = build_timeline(rec, CONFIG_L.unit_size).chunks
    assert chunk.seeds == {0: 1024, 1024: 3072, 8192: 32768}


EVENTS = st.one_of(
    st.builds(
        PercpuAlloc,
        st.none() | st.integers(0, 2**64 - 1),
        st.booleans(),
        st.booleans(),
        st.integers(0, 40000) | st.sampled_from([4, 8, 16]),
        st.sampled_from([1, 3, 4, 8, 4096, 8192]),
        st.sampled_from([0xFFFFE8FFFFC00000, 0xFFFFE8FFFFFBF000, 0xFFFF888627A2D000, 0x1234]),
        st.integers(0, 65535) | st.sampled_from([0, 4, 1240, 3136]),
        st.integers(0, 2**64 - 1),
        st.none() | st.integers(0, 2**30),
        st.none() | st.integers(0, 2**32),
    ),
    st.builds(
        PercpuFree,
        st.sampled_from([0xFFFFE8FFFFC00000, 0xFFFF888627A2D000]),
        st.integers(0, 65535),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(
        PercpuAllocFail, st.booleans(), st.booleans(), st.integers(0, 99999), st.integers(0, 9)
    ),
    st.builds(PercpuCreateChunk, st.sampled_from([0xFFFFE8FFFFC00000, 0xFFFFE8FFFFFBF000])),
    st.builds(PercpuDestroyChunk, st.sampled_from([0xFFFFE8FFFFC00000, 0xFFFF888627A2D000])),
)


@given(st.lists(EVENTS, max_size=40), st.booleans(), st.sampled_from([CONFIG_S, CONFIG_L]))
def test_any_event_sequence_replays_or_is_a_one_line_error(
    events: list[Event], hashed: bool, geometry: Geometry
) -> None:
    rec = Recording(
        "tracefs",
        tuple(RecordedEvent(n + 1, e) for n, e in enumerate(events)),
        hashed_pointers=hashed,
    )
    other = CONFIG_L if geometry is CONFIG_S else CONFIG_S
    try:
        replay(rec, geometry, what_if=other).summary()
    except PcpuError as exc:
        assert "\n" not in str(exc)
