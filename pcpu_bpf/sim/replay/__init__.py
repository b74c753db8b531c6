"""Replaying a recording or a tracefs trace into the simulated allocator.

``replay`` runs two things. The placement replay (steered.py) applies every event to a
model of the recorded geometry, with the kernel's chunk choices, and checks every
allocation in a chunk created during the recording against the kernel's offset. With a
what-if geometry, the workload replay (workload.py) then runs the same requests and
frees on a fresh model of the recorded geometry (the baseline) and of the what-if one,
where the model decides everything, so the two can be compared like for like.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pcpu_bpf.errors import RecordingError
from pcpu_bpf.kernel.percpu_stats import parse_percpu_stats, render_percpu_stats
from pcpu_bpf.model.events import PercpuAlloc, PercpuFree
from pcpu_bpf.model.kernel_stats import PercpuStats
from pcpu_bpf.recording import GEOMETRY_KEYS, Recording
from pcpu_bpf.sim.geometry import Geometry
from pcpu_bpf.sim.replay.steered import Difference, SteeredResult, replay_placements
from pcpu_bpf.sim.replay.timeline import Timeline, build_timeline
from pcpu_bpf.sim.replay.workload import WorkloadResult, replay_workload

__all__ = [
    "Difference",
    "ReplayReport",
    "SteeredResult",
    "WorkloadResult",
    "recorded_geometry",
    "replay",
]


@dataclass(frozen=True, slots=True)
class RecordedCounts:
    """What the recording itself shows."""

    events: int
    allocations: int
    frees: int
    failures: int
    chunks_created: int
    chunks_destroyed: int
    lost: int
    overwritten: int  # before the first event: the recording started later, no loss
    left_out: int  # events read but left out, from before the point nothing was lost
    chunks_before: int  # chunks its events name that existed before it


@dataclass
class ReplayReport:
    """Everything ``pcpu-bpf replay`` prints."""

    recording: Recording
    geometry: Geometry
    recorded: RecordedCounts
    placements: SteeredResult
    baseline: WorkloadResult | None = None
    what_if: WorkloadResult | None = None

    @property
    def recorded_peak_chunks(self) -> tuple[int, bool]:
        """The most dynamic chunks at once in the recording, and whether it is exact: the
        header's percpu_stats count every chunk at the start; a bare trace shows only
        those its events name."""
        stats = header_stats(self.recording)
        p = self.placements
        if stats is not None:
            return stats.globals.nr_chunks - 1 + p.peak_created, True
        return p.peak_chunks_seen, False

    @property
    def final(self) -> tuple[Geometry, Any]:
        """The geometry and allocator the replay asked for ended with."""
        if self.what_if is not None:
            return self.what_if.geometry, self.what_if.allocator
        return self.geometry, self.placements.allocator

    def summary(self) -> dict[str, Any]:
        """The JSON summary: one object."""
        p = self.placements
        out: dict[str, Any] = {
            "events": self.recorded.events,
            "allocations": self.recorded.allocations,
            "checked": p.checked,
            "differ": p.differ,
            "differ_concurrent": p.differ_concurrent,
            "unchecked": p.unchecked + p.unchecked_atomic,
            "unchecked_atomic": p.unchecked_atomic,
            "reordered": p.reordered,
            "pointers_differ": None if self.recording.hashed_pointers else p.pointers_differ,
            "chunk_bases": None
            if self.recording.hashed_pointers
            else {"checked": p.bases_checked, "differ": p.bases_differ},
            "conflicts": p.conflicts,
            "implied_frees": p.implied_frees,
            "chunks_created": p.chunks_created,
            "chunks_destroyed": p.chunks_destroyed,
            "recorded": asdict(self.recorded)
            | {
                "peak_chunks": self.recorded_peak_chunks[0],
                "peak_chunks_exact": self.recorded_peak_chunks[1],
            },
            "format": self.recording.format,
            "hashed_pointers": self.recording.hashed_pointers,
            "geometry": asdict(self.geometry),
            "seeds": {"allocations": p.seeds, "bytes": p.seed_bytes},
            "differences": [asdict(d) for d in p.differences],
            "conflict_lines": list(p.conflict_lines),
            "implied_lines": list(p.implied_lines),
        }
        if self.what_if is not None and self.baseline is not None:
            out["baseline"] = _workload(self.baseline)
            out["what_if"] = _workload(self.what_if)
            out["chunks_created"] = self.what_if.chunks_created
            out["chunks_destroyed"] = self.what_if.chunks_destroyed
        _, allocator = self.final
        out["percpu_stats"] = render_percpu_stats(allocator.percpu_stats())
        return out


def _workload(r: WorkloadResult) -> dict[str, Any]:
    d = {k: v for k, v in vars(r).items() if k not in ("allocator", "geometry")}
    d["geometry"] = asdict(r.geometry)
    return d


def recorded_geometry(recording: Recording) -> Geometry | None:
    """The geometry a JSON Lines recording's header names; None for a bare trace."""
    header = recording.header
    if header is None or header.geometry is None:
        return None
    values = {k: header.geometry[k] for k in GEOMETRY_KEYS}
    return Geometry(**values)  # type: ignore[arg-type]


def header_stats(recording: Recording) -> PercpuStats | None:
    """The percpu_stats the recording started with, if it has them."""
    header = recording.header
    if header is None or not header.percpu_stats:
        return None
    try:
        return parse_percpu_stats(header.percpu_stats)
    except Exception as exc:  # StatsParseError, or worse: the header is untrusted input
        raise RecordingError(f"line 1: the header's percpu_stats do not parse: {exc}") from None


def _check_fits(recording: Recording, timeline: Timeline, geometry: Geometry) -> None:
    """Every offset must fit a unit of ``geometry``, or the replay would mean nothing."""
    for rec, k in zip(recording.events, timeline.chunk_of, strict=True):
        e = rec.event
        if isinstance(e, (PercpuAlloc, PercpuFree)) and k is not None:
            end = e.off + (e.size if isinstance(e, PercpuAlloc) else 4)
            if end > geometry.unit_size:
                raise RecordingError(
                    f"line {rec.line}: offset {e.off} is past the {geometry.unit_size}-byte "
                    "unit: the recording comes from another geometry"
                )


def replay(
    recording: Recording, geometry: Geometry, *, what_if: Geometry | None = None
) -> ReplayReport:
    """Replay ``recording`` (taken on ``geometry``), and the what-if if one is given."""
    timeline = build_timeline(recording, geometry.unit_size)
    _check_fits(recording, timeline, geometry)
    events = recording.events
    recorded = RecordedCounts(
        events=len(events),
        allocations=sum(isinstance(e.event, PercpuAlloc) for e in events),
        frees=sum(isinstance(e.event, PercpuFree) for e in events),
        failures=timeline.recorded_fails,
        chunks_created=timeline.recorded_creates,
        chunks_destroyed=timeline.recorded_destroys,
        lost=recording.lost,
        overwritten=recording.overwritten,
        left_out=recording.left_out,
        chunks_before=sum(not c.created for c in timeline.chunks),
    )
    report = ReplayReport(
        recording, geometry, recorded, replay_placements(recording, timeline, geometry)
    )
    if what_if is not None:
        stats = header_stats(recording)
        report.baseline = replay_workload(recording, timeline, geometry, header_stats=stats)
        report.what_if = replay_workload(recording, timeline, what_if, header_stats=stats)
    return report
