"""`pcpu-bpf doctor`: one line per check, the fix for each problem; exit 0 only if bpf runs."""

from __future__ import annotations

from pathlib import Path

import click

from pcpu_bpf import doctor as checks
from pcpu_bpf.backends import open_backend

EPILOG = """\b
Examples:
  sudo pcpu-bpf doctor              # everything, including a real load and attach
  pcpu-bpf doctor --no-load         # only inspect the system
"""


def _start_backend() -> object:
    return open_backend("bpf")


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
def doctor(
    load: bool,
    proc_root: Path,
    modules_root: Path,
    debugfs_root: Path,
    tracefs_root: Path | None,
    release: str | None,
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
    results = checks.run_checks(
        paths, release=release, start_backend=_start_backend if load else None
    )
    for c in results:
        click.echo(c.line())
    if not checks.can_run(results):
        failed = sum(c.verdict == checks.FAIL for c in results)
        raise click.ClickException(f"the bpf backend cannot run here ({failed} check(s) failed)")
    click.echo("the bpf backend can run here")
