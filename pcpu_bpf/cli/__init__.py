"""The `pcpu-bpf` command group; each subcommand lives in its own module and is added here."""

from __future__ import annotations

import logging

import click

from pcpu_bpf import __version__
from pcpu_bpf.cli.detach import detach
from pcpu_bpf.cli.doctor import doctor
from pcpu_bpf.cli.record import record_command
from pcpu_bpf.cli.replay import replay_command
from pcpu_bpf.cli.serve import serve_command
from pcpu_bpf.cli.simulate import simulate

CONTEXT_SETTINGS = {"auto_envvar_prefix": "PCPU", "help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="pcpu-bpf")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
def main(verbose: bool) -> None:
    """Profile the Linux kernel's percpu memory allocator."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


for command in (detach, doctor, record_command, replay_command, serve_command, simulate):
    main.add_command(command)
