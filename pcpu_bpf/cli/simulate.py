"""`pcpu-bpf simulate`: run a named scenario through the allocator simulator."""

from __future__ import annotations

import json
import time

import click

from pcpu_bpf.errors import PcpuError
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.model.snapshot_json import snapshot_to_dict
from pcpu_bpf.sim.allocator import BalancePolicy
from pcpu_bpf.sim.geometry import Geometry
from pcpu_bpf.sim.host import NAMED_GEOMETRIES, named_geometry
from pcpu_bpf.sim.request import AllocRequest, RequestOutcome
from pcpu_bpf.sim.scenarios import SCENARIOS
from pcpu_bpf.sim.simulation import OPS_PER_SECOND, Simulation
from pcpu_bpf.units import human_bytes

EPILOG = """\b
Examples:
  pcpu-bpf simulate                          # the steady scenario, 10000 operations
  pcpu-bpf simulate -s netns-churn --ops 50000 --seed 3
  pcpu-bpf simulate -s atomic-pressure --stats   # and the kernel's percpu_stats text
  pcpu-bpf simulate -s leak --json | jq .sites
  pcpu-bpf simulate --ops 0 --alloc 8/6      # ask for one allocation, see what happens
"""


def _check_balance(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            BalancePolicy.parse(value)
        except PcpuError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command(epilog=EPILOG)
@click.option(
    "-s",
    "--scenario",
    type=click.Choice(list(SCENARIOS)),
    default="steady",
    show_default=True,
    help="Workload to run.",
)
@click.option(
    "--ops",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="Workload steps (each one allocation or free).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--geometry",
    type=click.Choice([*NAMED_GEOMETRIES, "host"]),
    default="default",
    show_default=True,
    help="Machine geometry: this project's reference 2-CPU box, a small 4-CPU box with a "
    "reserved chunk, or the live machine's (from percpu_stats and sysfs).",
)
@click.option(
    "--balance",
    default=None,
    metavar="POLICY",
    callback=_check_balance,
    help="Balance work: manual, eager or every:N (default: the scenario's).",
)
@click.option(
    "--alloc",
    "requests",
    multiple=True,
    metavar="SIZE[/ALIGN][,atomic]",
    help="After the scenario, request one allocation (repeatable).",
)
@click.option("--stats", is_flag=True, help="Also print percpu_stats in the kernel's format.")
@click.option("--json", "as_json", is_flag=True, help="Print the Snapshot as JSON.")
def simulate(
    scenario: str,
    ops: int,
    seed: int,
    geometry: str,
    balance: str | None,
    requests: tuple[str, ...],
    stats: bool,
    as_json: bool,
) -> None:
    """Run a scenario through the percpu allocator simulator and summarize it."""
    if as_json and (stats or requests):
        raise click.UsageError("--json prints the Snapshot alone: drop --stats and --alloc")
    parsed = [_parse_request(r) for r in requests]
    try:
        geo = _geometry(geometry)
        sim = Simulation(scenario, seed, geometry=geo, balance=balance)
        started = time.perf_counter()
        sim.advance(ops)
        elapsed = time.perf_counter() - started
        outcomes = [sim.request(r.size, r.align, r.atomic) for r in parsed]
        snap = sim.snapshot(timestamp=sim.ops / OPS_PER_SECOND)
    except PcpuError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(snapshot_to_dict(snap), indent=2))
    else:
        _summary(sim, snap, geo, elapsed)
        for r, outcome in zip(parsed, outcomes, strict=True):
            click.echo(_outcome_line(r, outcome))
    if stats:
        click.echo()
        click.echo(sim.percpu_stats_text(), nl=False)


def _geometry(name: str) -> Geometry:
    geo, assumptions = named_geometry(name)
    for a in assumptions:
        click.echo(f"geometry host: assuming {a}", err=True)
    return geo


def _parse_request(text: str) -> AllocRequest:
    try:
        return AllocRequest.parse(text)
    except PcpuError as exc:
        raise click.BadParameter(str(exc), param_hint="--alloc") from None


def _outcome_line(r: AllocRequest, outcome: RequestOutcome) -> str:
    """One request and what the kernel would have done with it."""
    what = f"alloc(size={r.size}, align={r.align}{', atomic' if r.atomic else ''})"
    if outcome.ptr is not None:
        return f"{what}: ptr {outcome.ptr:#x}"
    if outcome.rejection is not None:
        return f"{what}: rejected as the kernel does, no event: {outcome.rejection}"
    return f"{what}: failed (percpu_alloc_percpu_fail emitted)"


def _summary(sim: Simulation, snap: Snapshot, geo: Geometry, elapsed: float) -> None:
    t = snap.totals
    allocs, frees = t.allocations, t.frees + snap.untracked_frees
    live, live_bytes = t.live_allocations, t.live_bytes
    rate = sim.events / elapsed if elapsed > 0 else 0.0
    echo = click.echo
    echo(f"scenario {sim.scenario.name} (seed {sim.seed}): {sim.scenario.description}")
    echo(f"{sim.ops} operations, {sim.events} events in {elapsed:.2f} s ({rate:,.0f} events/s)")
    echo(
        f"geometry: {geo.nr_possible_cpus} possible CPUs, unit {human_bytes(geo.unit_size)}, "
        f"memcg kmem {'on' if geo.memcg_kmem else 'off'}"
    )
    echo(
        f"allocations {allocs}  frees {frees}  failures {snap.total_failures}  "
        f"chunks created {snap.chunk_creations} destroyed {snap.chunk_destructions}"
    )
    echo(f"live: {live} allocations, {human_bytes(live_bytes)}")
    ks = snap.kernel_stats
    if ks is not None and ks.percpu_stats is not None:
        g = ks.percpu_stats.globals
        echo(
            f"percpu_stats: {g.nr_chunks} chunks (max {g.nr_max_chunks}), "
            f"nr_cur_alloc {g.nr_cur_alloc}, empty_pop_pages {g.empty_pop_pages}; "
            f"meminfo Percpu {human_bytes(ks.meminfo_percpu_bytes or 0)}"
        )
    if snap.breakdown is not None:
        parts = ", ".join(f"{p} {human_bytes(n)}" for p, n in snap.breakdown.parts.items())
        echo(f"Percpu in parts: {parts}")
    echo()
    echo(f"{'CALL SITE':<32} {'ALLOCS':>8} {'FREES':>8} {'LIVE':>7} {'LIVE BYTES':>11}")
    rows = sorted(snap.by_call_site.items(), key=lambda item: (-item[1].live_bytes, item[0]))
    for name, s in rows:
        echo(
            f"{name[:32]:<32} {s.allocations:>8} {s.frees:>8} "
            f"{s.live_allocations:>7} {human_bytes(s.live_bytes):>11}"
        )
    if snap.untracked_frees:
        echo(f"{'[untracked frees]':<32} {0:>8} {snap.untracked_frees:>8} {0:>7} {'-':>11}")
