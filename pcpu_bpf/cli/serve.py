"""`pcpu-bpf serve`: the Prometheus exporter daemon (and its --check mode)."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

from pcpu_bpf.backends import (
    Backend,
    BackendOptions,
    ignored_options,
    open_backend,
)
from pcpu_bpf.backends.host_stats import DEFAULT_MAX_BPF_MAPS
from pcpu_bpf.bpf.pins import DEFAULT_PIN_DIR
from pcpu_bpf.cli.params import Seconds
from pcpu_bpf.daemon.http_server import DEFAULT_MAX_CONNECTIONS, Limits
from pcpu_bpf.daemon.listener import DEFAULT_LISTEN, bind, parse_listen
from pcpu_bpf.daemon.privileges import drop_capabilities
from pcpu_bpf.daemon.server import serve
from pcpu_bpf.daemon.systemd import configure_logging, sd_notify
from pcpu_bpf.daemon.web_config import PLAIN, WebSecurity, load_web_config
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.kernel.reader import read_kernel_stats
from pcpu_bpf.model.layout import (
    DEFAULT_LIVE_CAPACITY,
    DEFAULT_SITE_CAPACITY,
    MAX_TABLE_CAPACITY,
)
from pcpu_bpf.model.ranking import DEFAULT_MAX_CGROUPS
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.sim.scenarios import SCENARIOS

log = logging.getLogger(__name__)

# A daemon serves the live kernel, or the simulator for demos; it never falls back.
SERVE_BACKENDS = ("bpf", "sim")

# Seconds between two reads of the kernel's statistics, whatever the number of scrapers:
# reading debugfs percpu_stats holds pcpu_lock with interrupts off for as long as the
# kernel takes to walk every chunk (90 ms at 250,000 live allocations; docs/reliability.md).
DEFAULT_MIN_READ_INTERVAL = 5.0

EPILOG = """\b
Every option can also come from the environment variable shown with it
(systemd: /etc/default/pcpu-bpf). -v/--verbose is PCPU_VERBOSE=1.

\b
Examples:
  pcpu-bpf serve                              # live kernel on 127.0.0.1:9717
  pcpu-bpf serve --check                      # attach, report, detach, exit
  pcpu-bpf serve --backend sim --scenario leak --listen '[::1]:9717'
  pcpu-bpf serve --listen :9717 --web-config /etc/pcpu-bpf/web.yml   # TLS, basic auth
  curl -s localhost:9717/metrics | grep ^pcpu_live_bytes
"""


class _OneLineError(click.ClickException):
    """A bad option value, reported in one line (exit 2, like a usage error)."""

    exit_code = 2


_F = TypeVar("_F", bound=Callable[..., Any])


def _opt(name: str, *decls: str, **kwargs: Any) -> Callable[[_F], _F]:
    envvar = "PCPU_SERVE_" + name.split("/")[0].lstrip("-").replace("-", "_").upper()
    return click.option(name, *decls, envvar=envvar, show_envvar=True, **kwargs)


@click.command("serve", epilog=EPILOG)
@_opt(
    "--backend",
    default="bpf",
    show_default=True,
    metavar="bpf|sim",
    help="Where data comes from: bpf = the live kernel; sim = the simulator, for demos. "
    "Never falls back from bpf to sim on its own.",
)
@_opt(
    "--scenario",
    type=click.Choice(list(SCENARIOS)),
    default=None,
    help="Simulated workload (sim only) [default: steady].",
)
@_opt("--seed", type=int, default=None, help="Simulator seed (sim only) [default: 0].")
@_opt(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address for /metrics; [::1]:9717 for IPv6, :9717 for all IPv4 interfaces.",
)
@_opt(
    "--check",
    is_flag=True,
    help="Attach, print a one-line report of the first snapshot, detach and exit.",
)
@_opt(
    "--live-capacity",
    type=click.IntRange(min=1, max=MAX_TABLE_CAPACITY),
    default=None,
    help=f"Live-allocation table entries [default: {DEFAULT_LIVE_CAPACITY}].",
)
@_opt(
    "--site-capacity",
    type=click.IntRange(min=1, max=MAX_TABLE_CAPACITY),
    default=None,
    help=f"Call-site table entries [default: {DEFAULT_SITE_CAPACITY}].",
)
@_opt(
    "--max-bpf-maps",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Series of pcpu_bpf_map_percpu_bytes: the N BPF maps holding the most percpu "
    f'memory, the rest summed as map="(other)" (bpf only) [default: {DEFAULT_MAX_BPF_MAPS}].',
)
@_opt(
    "--max-cgroups",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Cgroups with series of their own, the N holding the most percpu memory (traced "
    "live bytes for pcpu_cgroup_live_bytes and the other traced families, the memory "
    "controller's charge for pcpu_cgroup_memory_percpu_bytes); the rest summed as "
    f'cgroup="(other)" (bpf only) [default: {DEFAULT_MAX_CGROUPS}].',
)
@_opt(
    "--owners/--no-owners",
    default=None,
    help="Name the owner behind generic helpers (the owner label: the first caller on the "
    "kernel stack that is no helper), at the cost of a stack walk per allocation at a "
    "helper (bpf only) [default: off].",
)
@_opt(
    "--helper",
    "helpers",
    multiple=True,
    metavar="FUNCTION",
    help="A kernel function that allocates on behalf of its caller, beyond the built-in "
    "list (docs/metrics.md, Owners); repeat for more (with --owners).",
)
@_opt(
    "--min-read-interval",
    type=Seconds(zero_ok=True),
    default=DEFAULT_MIN_READ_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    help="Read the kernel's percpu_stats and meminfo, list the BPF maps and walk the "
    "cgroups at most this often, however many scrape; scrapes in between get the last "
    "reading (its age: pcpu_kernel_stats_age_seconds). Live kernel only.",
)
@_opt(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="HTTP connections held at once; when full, the oldest one that has not sent a "
    "complete request is dropped. Needs as many open files (LimitNOFILE=).",
)
@_opt(
    "--web-config",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="TLS and basic auth for /metrics, in the Prometheus exporter-toolkit's web "
    "configuration format (tls_server_config, basic_auth_users) [default: plain HTTP, "
    "no authentication].",
)
@_opt(
    "--bpf-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory of the BPF C sources (bpf only) [default: the installed package's].",
)
@_opt(
    "--pin-dir",
    # readable=False: click would ask access(2), which ignores capabilities for a user
    # that is not root, and the service reaches its directory in a bpffs mounted 0700 by
    # CAP_DAC_READ_SEARCH alone.
    type=click.Path(file_okay=False, readable=False),
    default=str(DEFAULT_PIN_DIR),
    show_default=True,
    help="bpffs directory the maps and programs stay pinned in across restarts (bpf "
    "only); a compatible set there is adopted, counters continuing. `pcpu-bpf detach` "
    "removes it.",
)
def serve_command(
    backend: str,
    check: bool,
    listen: str,
    pin_dir: str,
    min_read_interval: float,
    max_connections: int,
    web_config: str | None,
    **options: Any,
) -> None:
    """Export percpu allocator metrics for Prometheus (the pcpu-bpf daemon)."""
    configure_logging()
    signal.signal(signal.SIGHUP, _ignore_hangup)  # from the start: compiling takes seconds
    if backend not in SERVE_BACKENDS:
        choices = ", ".join(SERVE_BACKENDS)
        raise _OneLineError(f"unknown backend {backend!r}; choose one of: {choices}")
    try:
        address = parse_listen(listen)
    except ValueError as exc:
        raise _OneLineError(str(exc)) from None
    security: WebSecurity = PLAIN
    if web_config is not None and not check:
        try:
            security = load_web_config(web_config)
        except PcpuError as exc:
            raise _OneLineError(str(exc)) from None
    if backend == "bpf":  # the sim's kernel stats are simulated: nothing to spare
        options["min_read_interval"] = min_read_interval
    # The collector logs a kernel statistics part failing (once per outage) and recovering.
    read_kernel_stats.warn = False
    # --check leaves nothing behind: it loads its own set and detaches it.
    if backend == "bpf" and not check:
        options["pin_dir"] = pin_dir
    options["helpers"] = tuple(options["helpers"]) or None
    backend_options = BackendOptions(**options)
    for name in ignored_options(backend, backend_options):
        log.warning("--%s does not apply to backend %s; ignored", name.replace("_", "-"), backend)
    listener: socket.socket | None = None
    if not check:
        # Bind before compiling and attaching: a busy port is found in milliseconds.
        sd_notify(f"STATUS=binding {address}")
        try:
            listener = bind(address)
        except PcpuError as exc:
            raise click.ClickException(str(exc)) from None
    log.info("starting backend %s", backend)
    sd_notify(f"STATUS=starting backend {backend} (compiling and attaching)")
    try:
        source = open_backend(backend, backend_options)
    except PcpuError as exc:
        _close(listener)
        raise click.ClickException(f"backend {backend} cannot start: {exc}") from None
    except Exception as exc:  # a bug below must still be one line; -v shows the traceback
        _close(listener)
        log.debug("backend %s failed to start", backend, exc_info=True)
        raise click.ClickException(f"backend {backend} cannot start: {exc!r}") from None
    with source:  # closing detaches, also on errors
        if check:
            try:
                report = check_report(source.snapshot())
            except Exception as exc:  # one line whatever broke; -v shows the traceback
                log.debug("first snapshot failed", exc_info=True)
                raise click.ClickException(f"backend {backend} attached, but: {exc}") from None
        else:
            assert listener is not None
            least_privilege(source)
            try:
                serve(
                    source,
                    listener,
                    limits=Limits(max_connections=max_connections),
                    min_read_interval=min_read_interval,
                    security=security,
                )
            except PcpuError as exc:
                raise click.ClickException(str(exc)) from None
    if check:
        click.echo(report)
    pinned = options.get("pin_dir")
    if pinned is not None:
        log.info("exiting; the set stays pinned in %s (`pcpu-bpf detach` removes it)", pinned)
    else:
        log.info("detached; exiting")


def least_privilege(source: Backend) -> None:
    """Drop every capability a snapshot no longer needs, now that the set is attached: one
    snapshot with all of them first (it opens what later ones read), then the probe."""
    try:
        first = source.snapshot()
    except Exception as exc:  # the collector reports it per scrape; keep what we have
        log.warning("first snapshot failed (%s): keeping the capabilities started with", exc)
        return
    unreadable = set(first.kernel_stats.errors) if first.kernel_stats else set()

    def probe() -> bool:
        source.expire_kernel_read()  # a read with the capabilities being tried
        try:
            snap = source.snapshot()
        except Exception:
            return False
        errors = set(snap.kernel_stats.errors) if snap.kernel_stats else set()
        return errors <= unreadable

    sd_notify("STATUS=dropping capabilities")
    try:
        drop_capabilities(probe)
    except (OSError, PcpuError) as exc:
        log.warning("could not drop capabilities: %s", exc)


def _ignore_hangup(signum: int, frame: FrameType | None) -> None:
    log.info("SIGHUP received: nothing to reload, ignored")


def _close(listener: socket.socket | None) -> None:
    if listener is not None:
        listener.close()


def check_report(snap: Snapshot) -> str:
    """One line: what is attached and the first snapshot's totals."""
    programs = sorted(snap.programs) if snap.programs is not None else []
    attached = (
        f"{len(programs)} BPF programs ({', '.join(programs)})" if programs else ("no BPF programs")
    )
    t = snap.totals
    parts = [
        f"ok: backend {snap.backend}, kernel {snap.kernel}, attached {attached}",
        f"{t.allocations} allocations, {t.frees + snap.untracked_frees} frees, "
        f"{t.live_allocations} live ({t.live_bytes} bytes) "
        f"at {len(snap.by_call_site)} call sites, {snap.total_failures} failures",
    ]
    ks = snap.kernel_stats
    if ks is not None and ks.meminfo_percpu_bytes is not None:
        parts.append(f"meminfo Percpu {ks.meminfo_percpu_bytes} bytes")
    if ks is not None and ks.percpu_stats is not None:
        parts.append(f"percpu_stats {ks.percpu_stats.globals.nr_chunks} chunks")
    if ks is not None and ks.errors:
        parts.append("unreadable: " + ", ".join(f"{k} ({v})" for k, v in sorted(ks.errors.items())))
    return "; ".join(parts) + "; detached"
