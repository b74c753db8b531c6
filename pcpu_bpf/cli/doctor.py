"""`pcpu-bpf doctor`: one line per check, the fix for each problem; exit 0 only if bpf runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from pcpu_bpf import doctor as checks
from pcpu_bpf.backends import open_backend
from pcpu_bpf.bpf import pins
from pcpu_bpf.bpf.loader import default_bpf_dir, layout_digest, program_defines
from pcpu_bpf.bpf.maps import Capacities
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.kernel.procfs import read_possible_cpus
from pcpu_bpf.model.layout import DEFAULT_LIVE_CAPACITY, DEFAULT_SITE_CAPACITY

EPILOG = """\b
Examples:
  sudo pcpu-bpf doctor              # everything, including a real load and attach
  pcpu-bpf doctor --no-load         # only inspect the system
"""


def _start_backend() -> object:
    return open_backend("bpf")


def _why_incompatible(
    pin_dir: Path, tracefs_root: Path | None, live: int, site: int
) -> Callable[[], str | None]:
    def why() -> str | None:
        try:
            defines = program_defines(
                read_layout(tracefs_root),
                live_capacity=live,
                site_capacity=site,
                nr_possible_cpus=read_possible_cpus(),
            )
            digest = layout_digest(default_bpf_dir(), defines)
        except (PcpuError, OSError) as exc:
            return f"cannot tell: {exc}"
        return pins.compatibility(pin_dir, digest, Capacities(live, site))

    return why


@click.command(epilog=EPILOG)
@click.option(
    "--load/--no-load",
    default=True,
    show_default=True,
    help="Finally compile, load and attach the programs (when every check passed).",
)
@click.option(
    "--proc-root", type=click.Path(path_type=Path, readable=False), default="/proc", hidden=True
)
@click.option(
    "--modules-root",
    type=click.Path(path_type=Path, readable=False),
    default="/lib/modules",
    hidden=True,
)
@click.option(
    "--debugfs-root",
    type=click.Path(path_type=Path, readable=False),
    default="/sys/kernel/debug",
    hidden=True,
)
@click.option(
    "--tracefs-root", type=click.Path(path_type=Path, readable=False), default=None, hidden=True
)
@click.option("--release", default=None, hidden=True, help="Kernel release (uname -r).")
@click.option(
    "--pin-dir",
    envvar="PCPU_SERVE_PIN_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default=pins.DEFAULT_PIN_DIR,
    show_default=True,
    help="Where `pcpu-bpf serve` pins its set: list it and say if this version adopts it.",
)
@click.option(
    "--live-capacity",
    envvar="PCPU_SERVE_LIVE_CAPACITY",
    type=int,
    default=DEFAULT_LIVE_CAPACITY,
    hidden=True,
)
@click.option(
    "--site-capacity",
    envvar="PCPU_SERVE_SITE_CAPACITY",
    type=int,
    default=DEFAULT_SITE_CAPACITY,
    hidden=True,
)
def doctor(
    load: bool,
    proc_root: Path,
    modules_root: Path,
    debugfs_root: Path,
    tracefs_root: Path | None,
    release: str | None,
    pin_dir: Path,
    live_capacity: int,
    site_capacity: int,
) -> None:
    """Check that the bpf backend can run here; print what is wrong and the fix."""
    paths = checks.Paths(proc_root=proc_root, modules_root=modules_root, debugfs_root=debugfs_root)
    if tracefs_root is not None:
        paths = checks.Paths(
            proc_root=proc_root,
            modules_root=modules_root,
            debugfs_root=debugfs_root,
            tracefs_candidates=(tracefs_root,),
        )
    why = _why_incompatible(pin_dir, tracefs_root, live_capacity, site_capacity)
    results = checks.run_checks(
        paths,
        release=release,
        start_backend=_start_backend if load else None,
        pinned=checks.check_pinned(pin_dir, why),
    )
    for c in results:
        click.echo(c.line())
    if not checks.can_run(results):
        failed = sum(c.verdict == checks.FAIL for c in results)
        raise click.ClickException(f"the bpf backend cannot run here ({failed} check(s) failed)")
    click.echo("the bpf backend can run here")
