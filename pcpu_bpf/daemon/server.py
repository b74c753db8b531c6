"""`serve`: the daemon's life around the HTTP server: readiness, watchdog, signals.

The caller binds first (`listener.bind`: a busy port is found before anything is
compiled), then opens the Backend, then calls `serve`, which reports READY=1, pings
the watchdog and returns on SIGTERM/SIGINT after the server has stopped; closing the
Backend (detaching) stays with the caller. SIGHUP is logged and ignored: there is
nothing to reload.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.daemon.app import make_registry
from pcpu_bpf.daemon.http_server import HttpServer, Limits
from pcpu_bpf.daemon.listener import ListenAddress, bind, bound_address
from pcpu_bpf.daemon.source import SNAPSHOT_WINDOW, ScrapeSource
from pcpu_bpf.daemon.systemd import sd_notify, watchdog_interval
from pcpu_bpf.daemon.web_config import PLAIN, WebSecurity
from pcpu_bpf.errors import ListenError

log = logging.getLogger(__name__)

# File descriptors kept free beyond the daemon's own and one per connection: a scrape
# opens debugfs and /proc files, and accept() needs one before a connection is dropped.
SPARE_FDS = 32


def serve(
    backend: Backend,
    listen: socket.socket | ListenAddress,
    stop: threading.Event | None = None,
    *,
    limits: Limits | None = None,
    min_read_interval: float = SNAPSHOT_WINDOW,
    security: WebSecurity = PLAIN,
) -> None:
    """Serve /metrics for ``backend`` until SIGTERM/SIGINT (or ``stop``); raises ListenError.

    ``listen`` is a socket from `listener.bind` (or an address to bind now). Snapshots
    are shared by the scrapes of min(0.5 s, ``min_read_interval``). ``security`` is TLS
    and basic auth from a web configuration file (default: plain HTTP, open).
    """
    stop = stop or threading.Event()
    if isinstance(listen, ListenAddress):
        sd_notify(f"STATUS=binding {listen}")
        listen = bind(listen)
    address = bound_address(listen)
    source = ScrapeSource(
        backend,
        window=min(SNAPSHOT_WINDOW, min_read_interval),
    )
    server = HttpServer(
        listen, make_registry(source), fit_open_file_limit(limits or Limits()), security
    )
    restore = _handle_signals(stop)
    try:
        server.start()
        url = f"{security.scheme}://{address}/metrics"
        if security.auth is not None:
            url += " (basic auth)"
        log.info("serving %s (backend %s)", url, backend.name)
        sd_notify(f"READY=1\nSTATUS=serving {url} (backend {backend.name})")
        interval = watchdog_interval()
        while not stop.wait(min(interval or 1.0, 1.0)):
            if not server.alive():
                raise ListenError(f"HTTP server on {address} stopped unexpectedly")
            # Ping only while scrapes can be answered: a snapshot stuck, or a loop that
            # stopped turning, for a whole watchdog interval lets systemd restart us.
            # Refused or evicted clients do not stop the pings.
            if (
                interval is not None
                and source.responsive(timeout=interval)
                and server.responsive(timeout=interval)
            ):
                sd_notify("WATCHDOG=1")
    finally:
        sd_notify("STOPPING=1\nSTATUS=stopping, detaching")
        log.info("stopping")
        server.stop()
        listen.close()
        restore()


def fit_open_file_limit(limits: Limits) -> Limits:
    """``limits`` with max_connections lowered to what RLIMIT_NOFILE allows, after raising
    the soft limit toward the hard one when needed (logged)."""
    in_use = len(os.listdir("/proc/self/fd"))
    needed = in_use + limits.max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.debug("cannot raise RLIMIT_NOFILE to %d: %s", target, exc)
    room = soft - in_use - SPARE_FDS if soft != resource.RLIM_INFINITY else needed
    if room < limits.max_connections:
        fitted = max(1, room)
        log.warning(
            "--max-connections %d does not fit the open-file limit %d (LimitNOFILE=, "
            "ulimit -n) with %d files open: holding at most %d connections",
            limits.max_connections,
            soft,
            in_use,
            fitted,
        )
        return replace(limits, max_connections=fitted)
    return limits


def _handle_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers; ``stop`` still works

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    def ignore(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: nothing to reload, ignored", signal.Signals(signum).name)

    handlers = {signal.SIGTERM: handler, signal.SIGINT: handler, signal.SIGHUP: ignore}
    old = {sig: signal.signal(sig, h) for sig, h in handlers.items()}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore
