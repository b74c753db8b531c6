"""`pcpu-bpf detach`: remove the daemon's pinned set (programs detach, maps are freed)."""

from __future__ import annotations

from pathlib import Path

import click

from pcpu_bpf.bpf.pins import DEFAULT_PIN_DIR, remove_set
from pcpu_bpf.errors import PcpuError

EPILOG = """\b
Examples:
  sudo pcpu-bpf detach                       # the default pin directory
  sudo pcpu-bpf detach --pin-dir /sys/fs/bpf/pcpu-bpf-test
"""


@click.command(epilog=EPILOG)
@click.option(
    "--pin-dir",
    envvar="PCPU_SERVE_PIN_DIR",
    show_envvar=True,
    # As serve's: access(2) would ignore capabilities (CAP_DAC_READ_SEARCH).
    type=click.Path(file_okay=False, readable=False, path_type=Path),
    default=DEFAULT_PIN_DIR,
    show_default=True,
    help="The pin directory `pcpu-bpf serve` uses.",
)
def detach(pin_dir: Path) -> None:
    """Unpin the daemon's maps, programs and links: the programs detach, counts are gone."""
    try:
        removed = remove_set(pin_dir)
    except OSError as exc:
        raise click.ClickException(f"cannot remove {exc.filename}: {exc.strerror}") from None
    except PcpuError as exc:
        raise click.ClickException(str(exc)) from None
    if not removed:
        click.echo(f"nothing pinned at {pin_dir}")
        return
    for directory, names in removed.items():
        links = sum(n.startswith("link_") for n in names)
        click.echo(
            f"removed {directory}: {len(names)} pins ({links} links, "
            f"{sum(n.startswith('prog_') for n in names)} programs, "
            f"{sum(n.startswith('map_') for n in names)} maps)"
        )
    click.echo(
        "the programs are detached once no process holds them: a running `pcpu-bpf serve` "
        "keeps its own until it exits"
    )
