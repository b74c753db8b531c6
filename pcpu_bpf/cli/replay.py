"""`pcpu-bpf replay FILE`: a recording or tracefs trace, replayed into the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pcpu_bpf.errors import PcpuError
from pcpu_bpf.kernel.percpu_stats import render_percpu_stats
from pcpu_bpf.recording import read_recording
from pcpu_bpf.sim.geometry import CONFIG_L, Geometry
from pcpu_bpf.sim.host import NAMED_GEOMETRIES, host_geometry, named_geometry
from pcpu_bpf.sim.pictures import chunk_map
from pcpu_bpf.sim.replay import ReplayReport, WorkloadResult, recorded_geometry, replay
from pcpu_bpf.top.chunks import chunk_lines
from pcpu_bpf.units import human_bytes

EPILOG = """\b
GEOMETRY is a name (default, small, host), field=value changes, or both:
  default,unit_size=512K   small   cpus=8   unit_size=2M,atom_size=2M
Changes without a name apply to the recorded geometry.

\b
Examples:
  pcpu-bpf replay trace.txt                 # check every offset, 0 expected
  pcpu-bpf replay trace.txt --cpus 8        # the same workload on 8 CPUs
  pcpu-bpf replay rec.jsonl --geometry unit_size=512K --chunks
  pcpu-bpf replay rec.jsonl --json | jq .differ
"""


def parse_geometry(spec: str, base: Geometry) -> Geometry:
    """NAME[,field=value...] or field=value,... applied to ``base``."""
    head, _, rest = spec.partition(",")
    if head.strip() in (*NAMED_GEOMETRIES, "host"):
        return named_geometry(head.strip())[0].changed(rest)
    return base.changed(spec)


def _recorded_on(
    spec: str | None, report_file: Path, header: Geometry | None
) -> tuple[Geometry, str]:
    if spec is not None:
        return parse_geometry(spec, header or CONFIG_L), f"--recorded-on {spec}"
    if header is not None:
        return header, "from the recording's header"
    try:
        return host_geometry()[0], "this machine's (a bare trace names none; --recorded-on)"
    except (OSError, PcpuError):
        return CONFIG_L, "the reference machine's (a bare trace names none; --recorded-on)"


@click.command(epilog=EPILOG)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--recorded-on",
    metavar="GEOMETRY",
    help="The geometry of the machine the file comes from (default: the recording's "
    "header; for a bare trace this machine's, else the reference machine's).",
)
@click.option(
    "--geometry",
    "what_if_spec",
    metavar="GEOMETRY",
    help="What if: also replay the workload on this geometry, beside the recorded one.",
)
@click.option(
    "--cpus",
    type=click.IntRange(min=1, max=8192),
    help="What if: this many possible CPUs (with --geometry, on top of it).",
)
@click.option("--chunks", is_flag=True, help="Also draw each chunk at the end as a row of pages.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def replay_command(
    file: Path,
    recorded_on: str | None,
    what_if_spec: str | None,
    cpus: int | None,
    chunks: bool,
    as_json: bool,
) -> None:
    """Replay FILE (a pcpu-bpf recording or a tracefs percpu trace) into the simulator.

    Every allocation in a chunk the kernel created during the recording is placed by
    the simulator and compared with the kernel's offset; chunks that existed before are
    seeded from what the file shows. The summary gives the events, how many offsets
    could be checked and how many differ, chunk creations and destructions against the
    recorded ones, and the final percpu_stats. --geometry and --cpus replay the same
    workload on another layout and compare it with the recorded one.
    """
    try:
        recording = read_recording(file)
        geometry, where = _recorded_on(recorded_on, file, recorded_geometry(recording))
        what_if = None
        if what_if_spec is not None or cpus is not None:
            what_if = parse_geometry(what_if_spec or "", geometry)
            if cpus is not None:
                what_if = what_if.with_cpus(cpus).check()
        report = replay(recording, geometry, what_if=what_if)
    except PcpuError as exc:
        raise click.ClickException(str(exc)) from exc
    # everything is computed before the first line is printed: nothing half-written
    if as_json:
        click.echo(json.dumps(report.summary(), separators=(",", ":")))
        return
    lines = _text(report, file, where)
    if chunks:
        lines += ["", *_chunk_view(report)]
    click.echo("\n".join(lines))


def _geometry_text(g: Geometry) -> str:
    return (
        f"{g.nr_possible_cpus} CPUs ({g.nr_units} units), unit {human_bytes(g.unit_size)}, "
        f"atom {human_bytes(g.atom_size)}, memcg kmem {'on' if g.memcg_kmem else 'off'}"
    )


def _text(report: ReplayReport, file: Path, where: str) -> list[str]:
    rec, p, r = report.recording, report.placements, report.recorded
    pointers = "hashed pointers" if rec.hashed_pointers else "real pointers"
    kind = "pcpu-bpf recording" if rec.format == "jsonl" else "tracefs trace"
    lost = f"{r.lost} LOST: the replay cannot be exact" if r.lost else "none lost"
    if r.overwritten or r.left_out:
        lost += f"; {r.overwritten} overwritten before, {r.left_out} left out"
    out = [
        f"{file}",
        f"  {kind}, {pointers}, {r.events} events ({lost})",
        f"  {r.allocations} allocations, {r.frees} frees, {r.failures} failures, "
        f"{r.chunks_created} chunks created, {r.chunks_destroyed} destroyed",
        f"geometry: {_geometry_text(report.geometry)}",
        f"  {where}",
        "",
        "placements (the kernel's chunk, the simulator's offset):",
        f"  checked {p.checked} allocations in chunks created during the recording: "
        f"{p.differ} differ",
        *(
            [f"    (* {p.differ_concurrent} of them beside another task's event within 50 us)"]
            if p.differ_concurrent
            else []
        ),
        f"  unchecked {p.unchecked} in the {r.chunks_before} chunks that existed before",
        f"    (seeded with {p.seeds} allocations, {human_bytes(p.seed_bytes)})",
        f"  applied before their turn {p.reordered} (traced late), did not apply {p.conflicts}",
    ]
    if p.implied_frees:
        out.append(f"  freed untraced {p.implied_frees} (the kernel put a later allocation there)")
    if not rec.hashed_pointers:
        out.insert(
            -1,
            f"  pointers differ {p.pointers_differ}; new chunks at the simulator's own "
            f"bases: {p.bases_checked - p.bases_differ} of {p.bases_checked}",
        )
    if p.unchecked_atomic:
        out.insert(
            -1,
            f"  unchecked {p.unchecked_atomic} atomic ones in new chunks (population is not "
            "recorded)",
        )
    for d in p.differences:
        model = "no room" if d.model_off is None else f"{d.model_off}"
        near = " *" if d.concurrent else ""
        out.append(
            f"  line {d.line}: the kernel took {d.recorded_off}, the simulator {model}{near}"
        )
    out += [f"  {c}" for c in p.conflict_lines]
    out += [
        "",
        f"{'chunks':<24} {'recorded':>9} {'replayed':>9}",
        f"{'  created':<24} {r.chunks_created:>9} {p.chunks_created:>9}",
        f"{'  destroyed':<24} {r.chunks_destroyed:>9} {p.chunks_destroyed:>9}",
    ]
    if report.what_if is not None and report.baseline is not None:
        out += ["", *_what_if(report, report.baseline, report.what_if)]
    geometry, allocator = report.final
    which = "what-if" if report.what_if is not None else "replayed"
    stats = render_percpu_stats(allocator.percpu_stats()).rstrip("\n")
    out += ["", f"final percpu_stats ({which}):", stats]
    return out


def _what_if(report: ReplayReport, base: WorkloadResult, alt: WorkloadResult) -> list[str]:
    r = report.recorded
    most, exact = report.recorded_peak_chunks
    peak = str(most) if exact else f">={most}"

    def row(name: str, recorded: str, a: str, b: str) -> str:
        return f"{name:<24} {recorded:>9} {a:>9} {b:>9}"

    return [
        f"what if: {_geometry_text(alt.geometry)}",
        "  the same requests and frees; the simulator places the allocations and",
        "  creates and destroys the chunks itself",
        f"  (live at the start, estimated: {base.start_allocations} allocations, "
        f"{human_bytes(base.start_bytes)})",
        row("", "recorded", "baseline", "what-if"),
        row(
            "  chunks created",
            str(r.chunks_created),
            str(base.chunks_created),
            str(alt.chunks_created),
        ),
        row(
            "  chunks destroyed",
            str(r.chunks_destroyed),
            str(base.chunks_destroyed),
            str(alt.chunks_destroyed),
        ),
        row("  most chunks at once", peak, str(base.peak_chunks), str(alt.peak_chunks)),
        row(
            "  Percpu at most",
            "-",
            human_bytes(base.percpu_bytes_peak),
            human_bytes(alt.percpu_bytes_peak),
        ),
        row(
            "  Percpu at the end",
            "-",
            human_bytes(base.percpu_bytes_end),
            human_bytes(alt.percpu_bytes_end),
        ),
        row("  failed allocations", str(r.failures), str(base.failed), str(alt.failed)),
    ]


def _chunk_view(report: ReplayReport) -> list[str]:
    _, allocator = report.final
    if report.what_if is not None:
        m = chunk_map(allocator, note="what-if: the live set at the start is estimated")
        title = "chunks at the end (what-if)"
    else:
        note = "existed before the recording: only what the recording shows is drawn"
        notes = dict.fromkeys(report.placements.before_bases, note)
        m = chunk_map(allocator, notes=notes)
        title = "chunks at the end (replayed)"
    return [title, *chunk_lines(m)]
