"""pcpu-top: percpu allocations by call site, one table per interval (bcc's slabratetop)."""

from __future__ import annotations

import os
import sys

import click
from click.core import ParameterSource

from pcpu_bpf import __version__
from pcpu_bpf.backends import Backend, BackendOptions, bpf_failure, first_line, open_backend
from pcpu_bpf.backends.remote import DEFAULT_URL
from pcpu_bpf.cli.params import Seconds
from pcpu_bpf.errors import BackendUnavailable, PcpuError, ProgramLoadError, ScenarioError
from pcpu_bpf.top.keys import Keyboard, is_terminal
from pcpu_bpf.top.run import DEFAULT_LIMIT, TopDeps, TopOptions, run_top
from pcpu_bpf.top.view import DEFAULT_GROUPING, DEFAULT_SORT, GROUPINGS, SORT_KEYS

EXAMPLES = f"""\b
Header:
  window      seconds the rates cover; the first table of a fresh trace
              counts from when the programs attached ("from attach")
  parts       meminfo's Percpu in parts, shares of it: static, resv
              (reserved), traced (live, made since tracing began), untraced
              (live from before), own (the profiler's maps, in bytes),
              empty (empty populated pages), frag (free space in pages in
              use), unexpl; "explained" is all but unexpl ("~": the host
              was busy while the kernel's figures were read: not exact)
\b
Columns:
  CALL SITE   kernel function that asked for percpu memory ("untracked":
              frees of memory allocated before tracing began)
  ALLOCS/s    allocations per second in the window
  FREES/s     frees per second in the window
  LIVE        allocations still live (made since tracing began)
  LIVE BYTES  percpu memory they hold (size x units, as meminfo counts)
  AVG         mean requested size of the site's allocations
  GROWTH      live bytes added in the window (with -s growth)
  TREND       live bytes over the last 8 windows (with --live)
  AGE         age of the site's oldest live allocation
  FAIL/s      failures per second; the kernel's fail event names no call
              site, so failures get rows of their own by class:
              [failed], [failed atomic], [failed reserved], ...
  OLD, OLD BYTES replace LIVE, LIVE BYTES with --min-age.

\b
Keys (--live on a terminal): q quits, s switches table and sizes,
g sorts by growth and back.

\b
Simulator scenarios (--scenario):
  steady, netns-churn, memcg-churn, bpf-maps, leak, atomic-pressure,
  chunk-churn, fragmentation

\b
Examples:
  pcpu-top                # one table after 1 second, then exit
  pcpu-top 5 3            # three tables, 5 seconds apart
  pcpu-top --live         # redraw every second until q or Ctrl-C
  pcpu-top -s allocs -r 5 # the 5 busiest call sites
  pcpu-top -s growth 10   # what grew most in 10 seconds
  pcpu-top --min-age 600  # only what has been live 10 minutes or more
  pcpu-top --sizes        # the requested sizes, as a histogram
  pcpu-top -s fails       # failure classes first
  pcpu-top --json 1 10    # ten JSON documents, one per line
  pcpu-top --chunks --backend sim --scenario fragmentation
                          # each chunk as a row of pages (the live
                          # kernel: percpu_stats figures, no pages)
  pcpu-top --backend sim --scenario leak 1 2
  pcpu-top --from {DEFAULT_URL}
"""


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _quiet_broken_pipe() -> None:
    # `pcpu-top --json 1 100 | head -1`: the reader left; exit quietly, and keep the
    # interpreter from failing again when it flushes stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@click.command(
    epilog=EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 79},
)
@click.version_option(__version__, prog_name="pcpu-top")
@click.argument("interval", type=Seconds(), default=1.0, required=False)
@click.argument("count", type=click.IntRange(min=1), required=False)
@click.option("--live", is_flag=True, help="Redraw in place every INTERVAL until Ctrl-C.")
@click.option(
    "-s",
    "--sort",
    type=click.Choice(SORT_KEYS),
    default=DEFAULT_SORT,
    metavar="KEY",
    help="Order rows by live-bytes (default), allocs (/s), frees (/s), bytes (allocated/s), "
    "fails (/s), growth (live bytes added in the window) or age (oldest live).",
)
@click.option(
    "--min-age",
    type=Seconds(zero_ok=True),
    default=None,
    metavar="SECONDS",
    help="Show only allocations live at least this long, as memleak -o does; sites "
    "without any are left out.",
)
@click.option(
    "--by",
    type=click.Choice(GROUPINGS),
    default=DEFAULT_GROUPING,
    metavar="ROW",
    help="What a row is: call_site (default; with the owner behind a generic helper, "
    "where it differs), owner (every call site that allocated for it) or cgroup (of the "
    "allocating tasks).",
)
@click.option(
    "--owners/--no-owners",
    default=None,
    help="Name the owner behind generic helpers from kernel stacks (live kernel; a stack "
    "walk per allocation at a helper) [default: on with --by owner].",
)
@click.option(
    "--sizes", is_flag=True, help="Draw the requested sizes as a histogram instead of the table."
)
@click.option(
    "--chunks",
    is_flag=True,
    help="Show each chunk as a row of pages with its free bytes, largest free run and "
    "fragmentation, instead of the call-site table.",
)
@click.option(
    "-r",
    "--limit",
    type=click.IntRange(min=0),
    default=DEFAULT_LIMIT,
    show_default=True,
    metavar="N",
    help="Show at most N rows (0: all).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document per interval, one a line."
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "bpf", "sim"]),
    default="auto",
    show_default=True,
    help="Trace the live kernel (bpf) or run the simulator (sim); auto: bpf when it can run.",
)
@click.option(
    "--scenario",
    metavar="NAME",
    help="Simulator workload (default: steady; implies --backend sim); the list is below.",
)
@click.option(
    "--from",
    "from_url",
    metavar="URL",
    help="Read a running `pcpu-bpf serve` instead of tracing (e.g. 127.0.0.1:9717); "
    "live numbers then cover everything since the daemon started.",
)
@click.pass_context
def main(
    ctx: click.Context,
    interval: float,
    count: int | None,
    live: bool,
    sort: str,
    min_age: float | None,
    by: str,
    owners: bool | None,
    sizes: bool,
    chunks: bool,
    limit: int,
    as_json: bool,
    backend: str,
    scenario: str | None,
    from_url: str | None,
) -> None:
    """Percpu memory allocations by kernel call site, one table per INTERVAL.

    Prints one table after INTERVAL seconds (default 1) and exits, or COUNT tables.
    The header shows the kernel's totals (meminfo Percpu, chunks and live allocations
    from percpu_stats), Percpu in parts, and the traced live allocations and rates.
    Rates are the difference of two snapshots over the window; nothing is cleared.
    The first window counts from when the programs attached.
    """

    deps = ctx.obj if isinstance(ctx.obj, TopDeps) else TopDeps()
    if live and as_json:
        raise click.UsageError("--live redraws a terminal; --json writes lines: choose one")
    if chunks and sizes:
        raise click.UsageError("--chunks and --sizes are two views: choose one")
    if sizes and as_json:
        raise click.UsageError("--sizes draws a histogram; --json writes lines: choose one")
    if min_age is not None and from_url is not None:
        raise click.UsageError(
            "--min-age walks the live table, which a daemon does not export; with --from, "
            "query its age bands (pcpu_live_by_age_bytes) instead"
        )
    if min_age is not None and by == "cgroup":
        raise click.UsageError("--min-age counts by site; the live table keeps no cgroup ages")
    if from_url is not None and owners is not None:
        raise click.UsageError("--owners is the daemon's (pcpu-bpf serve --owners) with --from")
    if from_url is not None and (_explicit(ctx, "backend") or scenario is not None):
        raise click.UsageError("--from reads a daemon; it takes no --backend or --scenario")
    if scenario is not None and backend == "bpf":
        raise click.UsageError("--scenario applies to the sim backend only")
    out = sys.stdout
    try:
        options = BackendOptions(
            scenario=scenario,
            url=from_url,
            min_age=min_age,
            owners=owners if owners is not None else (True if by == "owner" else None),
        )
        source = _open(deps, "remote" if from_url is not None else backend, options)
        opts = TopOptions(
            interval=interval,
            count=count if count is not None else (None if live else 1),
            live=live,
            sort=sort,
            limit=limit,
            as_json=as_json,
            source=source.label,
            sizes=sizes,
            min_age=min_age,
            by=by,
            chunks=chunks,
            block_glyphs=_utf8_terminal(out),
        )
        if live and deps.keys is None and is_terminal(sys.stdin):
            deps.keys = Keyboard
        with source:
            run_top(source, out, opts, deps=deps)
    except KeyboardInterrupt:
        # Ctrl-C is how a person ends the live view: not an error, no traceback.
        if live:
            out.write("\n")
        out.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    except PcpuError as exc:
        raise click.ClickException(first_line(exc)) from exc


def _utf8_terminal(out: object) -> bool:
    """Block glyphs only where a person reads a UTF-8 terminal; pipes get plain ASCII."""
    isatty = getattr(out, "isatty", None)
    encoding = str(getattr(out, "encoding", "") or "").lower().replace("-", "")
    return bool(isatty and isatty()) and encoding == "utf8"


def _open(deps: TopDeps, backend: str, options: BackendOptions) -> Backend:
    """Open the chosen source through the one chooser; failures are one line."""
    try:
        return open_backend(
            backend,
            options,
            on_fallback=lambda why: click.echo(f"pcpu-top: {why}", err=True),
            constructors=deps.constructors,
        )
    except ScenarioError as exc:
        raise click.BadParameter(first_line(exc), param_hint="'--scenario'") from exc
    except (BackendUnavailable, ProgramLoadError) as exc:
        hint = "" if "doctor" in str(exc) else "; run `pcpu-bpf doctor` for the fix"
        raise click.ClickException(f"{bpf_failure(exc)}: {first_line(exc)}{hint}") from exc
