"""The exporter's HTTP server: /metrics over a Backend, signals, readiness.

The caller attaches first (opens the Backend) and only then calls `serve`, which binds,
reports READY=1, pings the watchdog and returns on SIGTERM/SIGINT after the server has
stopped; closing the Backend (detaching) stays with the caller. Snapshots are taken at
scrape time, under a lock, so concurrent scrapes never read a backend twice at once.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from types import FrameType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends.base import Backend
from pcpu_bpf.daemon.systemd import sd_notify, watchdog_interval
from pcpu_bpf.errors import ListenError
from pcpu_bpf.model.snapshot import Snapshot

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9717"
# serve_forever's poll interval bounds how long shutdown() waits: well under a second.
_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A HOST:PORT to listen on; IPv6 hosts are written in brackets, [::1]:9717."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """Parse HOST:PORT, [V6HOST]:PORT or :PORT (all IPv4 interfaces); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {text!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen address {text!r}: write IPv6 hosts in brackets, [::1]:9717")
    return ListenAddress(host or "0.0.0.0", int(port))


class _Handler(WSGIRequestHandler):
    """Request handler that logs requests at debug level instead of printing them."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingMixIn, WSGIServer):
    """Threaded WSGI server; daemon threads, so a hung client never blocks exit."""

    daemon_threads = True


_LANDING = b"""<html><head><title>pcpu-bpf</title></head><body>
<h1>pcpu-bpf</h1><p>Percpu allocator profiler. <a href="/metrics">Metrics</a></p>
</body></html>
"""


def make_app(registry: CollectorRegistry) -> WSGIApplication:
    """/metrics from ``registry``, a landing page at /, 404 elsewhere."""
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_LANDING]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


class GuardedBackend:
    """The backend behind a lock (one snapshot at a time), which the watchdog probes."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self.backend.snapshot()

    def responsive(self, timeout: float) -> bool:
        """False when a snapshot has been stuck for ``timeout`` seconds or more."""
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True


def make_registry(source: GuardedBackend) -> CollectorRegistry:
    """A private registry: the pcpu_ catalog plus this process's own CPU and memory."""
    registry = CollectorRegistry()
    registry.register(PcpuCollector(source.snapshot))
    ProcessCollector(registry=registry)
    return registry


def bind(listen: ListenAddress, app: WSGIApplication) -> WSGIServer:
    """Listen on ``listen``; ListenError with the reason (port in use, no such address)."""
    try:
        infos = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family = infos[0][0]
        server_class = type("Server", (_Server,), {"address_family": family})
        server: WSGIServer = server_class((listen.host, listen.port), _Handler)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ListenError(f"cannot listen on {listen}: {reason}") from exc
    server.set_app(app)
    return server


def bound_address(server: WSGIServer) -> ListenAddress:
    """The address really bound (port 0 becomes the port the kernel chose)."""
    host, port = server.server_address[:2]
    return ListenAddress(str(host), int(port))


def serve(backend: Backend, listen: ListenAddress, stop: threading.Event | None = None) -> None:
    """Serve /metrics for ``backend`` until SIGTERM/SIGINT (or ``stop``); raises ListenError."""
    stop = stop or threading.Event()
    sd_notify(f"STATUS=binding {listen}")
    source = GuardedBackend(backend)
    server = bind(listen, make_app(make_registry(source)))
    address = bound_address(server)
    thread = threading.Thread(
        target=server.serve_forever, args=(_POLL_SECONDS,), name="http", daemon=True
    )
    restore = _handle_signals(stop)
    thread.start()
    try:
        url = f"http://{address}/metrics"
        log.info("serving %s (backend %s)", url, backend.name)
        sd_notify(f"READY=1\nSTATUS=serving {url} (backend {backend.name})")
        interval = watchdog_interval()
        while not stop.wait(min(interval or 1.0, 1.0)):
            if not thread.is_alive():
                raise ListenError(f"HTTP server on {address} stopped unexpectedly")
            # Ping only while scrapes can get a snapshot: one stuck for a whole
            # watchdog interval lets systemd restart the daemon.
            if interval is not None and source.responsive(timeout=interval):
                sd_notify("WATCHDOG=1")
    finally:
        sd_notify("STOPPING=1\nSTATUS=stopping, detaching")
        log.info("stopping")
        server.shutdown()
        server.server_close()
        restore()


def _handle_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers; ``stop`` still works

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore
