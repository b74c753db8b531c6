"""The exporter's HTTP server: one asyncio loop accepts and reads, a few threads scrape.

Accepting and reading request heads costs no thread, so idle or slow clients cannot tie
up what scrapes need. The number of connections held is bounded: when full, the oldest
connection that has not yet sent a complete request head is dropped to let the new one
in (failing that, the oldest one still taking its response). Heads are bounded in size
and in time. Complete /metrics requests go to a small pool
of worker threads (the collector is synchronous); everything else is answered in the loop.

With a web configuration (--web-config), TLS runs inside each connection's own stream
(streams.py): the handshake counts against the same bound and deadline as the head.
Basic-auth credentials are checked with bcrypt on a thread of their own, so a flood of
wrong passwords delays only other first-time logins, never scrapes by a client whose
credentials passed before.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from pcpu_bpf.daemon.app import metrics_response, quick_response
from pcpu_bpf.daemon.basic_auth import CHALLENGE
from pcpu_bpf.daemon.http import HeadBuffer, HttpError, Request, Response, parse_head, text_response
from pcpu_bpf.daemon.listener import BACKLOG
from pcpu_bpf.daemon.streams import (
    READ_CHUNK,
    PlainHttpToTls,
    PlainStream,
    TlsStream,
    plain_to_tls_answer,
)
from pcpu_bpf.daemon.web_config import PLAIN, WebSecurity
from pcpu_bpf.daemon.workers import Workers

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
_WARN_EVERY = 60.0  # seconds between repeated warnings about clients
# Seconds a stopping server waits for scrapes under way (each takes milliseconds; only
# a read stuck in the kernel takes longer).
SCRAPE_DRAIN = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold: connections in all, and time to send a head or take a
    response."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    head_timeout: float = 10.0  # TLS handshake, request head and password check, together
    send_timeout: float = 10.0
    workers: int = 2


# What a connection is doing, in the order it is dropped to make room: still in its
# handshake or head (nothing invested yet), waiting for its password check, then taking
# its response (answered; a slow reader), never while its scrape is being worked on.
HEAD, AUTH, SENDING, WORKING = "head", "auth", "sending", "working"
_EVICTION_ORDER = (HEAD, AUTH, SENDING)


class _Connection:
    __slots__ = ("transport", "phase")

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.phase = HEAD


class HttpServer:
    """Serves a registry on an already listening socket, from a thread of its own."""

    def __init__(
        self,
        sock: socket.socket,
        registry: CollectorRegistry,
        limits: Limits | None = None,
        security: WebSecurity = PLAIN,
    ) -> None:
        limits = limits or Limits()
        self._sock = sock
        self._registry = registry
        self.limits = limits
        self.security = security
        self._connections: dict[int, _Connection] = {}  # in order of arrival
        self._next_id = 0
        self.evicted = 0
        self.refused = 0
        self._warned: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._workers = Workers(limits.workers, name="scrape")
        # One thread: password checks queue behind each other, not behind scrapes.
        self._auth_workers = Workers(1, name="auth") if security.auth is not None else None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    # --- control, from other threads ------------------------------------------------

    def start(self) -> None:
        """Start serving; returns once the loop accepts connections (raises if it cannot)."""
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def alive(self) -> bool:
        """True while the serving thread runs."""
        return self._thread.is_alive()

    def responsive(self, timeout: float) -> bool:
        """True when the loop runs a callback within ``timeout`` seconds (it is not stuck)."""
        loop, answered = self._loop, threading.Event()
        if loop is None or not self.alive():
            return False
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # loop closed
            return False
        return answered.wait(timeout)

    def stop(self, timeout: float = 2.0, drain: float = SCRAPE_DRAIN) -> None:
        """Stop accepting, drop every connection, end the thread (waits up to ``timeout``),
        then wait up to ``drain`` seconds for scrapes under way to finish, so the caller
        can close the backend without pulling it from under one."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # already closed
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        if not self._workers.close(timeout=drain):
            log.warning("a scrape was still under way %g s after stopping; not waiting", drain)
        if self._auth_workers is not None:
            self._auth_workers.close()

    # --- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            log.error("HTTP server failed: %r", exc)
        finally:
            self._started.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self._loop, self._stopping = loop, asyncio.Event()
        server = await asyncio.start_server(
            self._serve_connection, sock=self._sock, backlog=BACKLOG, limit=READ_CHUNK * 4
        )
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for connection in list(self._connections.values()):
                connection.transport.abort()
            self._connections.clear()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # e.g. accept() failing with EMFILE: asyncio backs off for a second by itself.
        exc = context.get("exception")
        self._warn("loop", "HTTP server: %s%s", context.get("message"), f" ({exc})" if exc else "")

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """Log at warning level, at most once a minute per kind (clients can be many)."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[kind] = now
            log.warning(message, *args)
        else:
            log.debug(message, *args)

    def _admit(self, connection: _Connection) -> bool:
        """Make room for ``connection``; False when every slot holds a scrape being worked on."""
        if len(self._connections) >= self.limits.max_connections:
            victim = next(
                (
                    k
                    for phase in _EVICTION_ORDER
                    for k, c in self._connections.items()
                    if c.phase == phase
                ),
                None,
            )
            if victim is None:
                self.refused += 1
                self._warn(
                    "full",
                    "all %d connections hold scrapes being worked on: refusing new ones",
                    self.limits.max_connections,
                )
                return False
            self._connections.pop(victim).transport.abort()
            self.evicted += 1
            self._warn(
                "evict",
                "connection limit (%d) reached: dropping the oldest connections that sent "
                "no complete request (or do not take their response)",
                self.limits.max_connections,
            )
        self._next_id += 1
        self._connections[self._next_id] = connection
        return True

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = _Connection(writer.transport)
        if not self._admit(connection):
            if self.security.tls is not None:
                writer.transport.abort()  # no session to answer in, and none is worth making
                return
            writer.transport.set_write_buffer_limits(high=0)
            writer.write(text_response(503, "too many connections; retry").encode())
            writer.transport.close()  # after the small answer is flushed
            return
        key = self._next_id
        try:
            await self._answer(reader, writer, connection)
        except (ConnectionError, OSError) as exc:
            log.debug("client connection failed: %s", exc)
        except Exception as exc:  # a bug must cost one connection, not the server
            log.debug("answering a request failed", exc_info=True)
            self._warn("bug", "answering a request failed: %r", exc)
        finally:
            self._connections.pop(key, None)
            writer.transport.abort()

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:
        tls = self.security.tls
        stream = PlainStream(reader, writer) if tls is None else TlsStream(tls, reader, writer)
        try:
            async with asyncio.timeout(self.limits.head_timeout):
                if isinstance(stream, TlsStream):
                    await self._handshake(stream)
                request = await _read_request(stream)
                if request is None:
                    return  # the client closed (or was evicted) before sending a request
                refusal = await self._authorize(request, connection)
        except _NoAnswer:
            return
        except TimeoutError:
            if isinstance(stream, TlsStream) and not stream.ready:
                return  # no TLS session to answer in
            await self._send(stream, text_response(408, "request not received in time"))
            return
        except HttpError as exc:
            await self._send(stream, text_response(exc.status, str(exc)))
            return
        response = refusal or quick_response(request)
        if response is None:
            connection.phase = WORKING
            response = await self._workers.run(partial(metrics_response, self._registry, request))
        connection.phase = SENDING
        await self._send(stream, response, head=request.method == "HEAD")

    async def _handshake(self, stream: TlsStream) -> None:
        try:
            await stream.handshake()
        except PlainHttpToTls:
            stream.writer.write(plain_to_tls_answer())  # in clear: the client speaks no TLS
            await self._drain_and_close(stream.writer, stream.writer.transport.close)
            raise _NoAnswer from None
        except ssl.SSLError as exc:
            log.debug("TLS handshake failed: %s", exc)
            raise _NoAnswer from None

    async def _authorize(self, request: Request, connection: _Connection) -> Response | None:
        """None when the request may go on; the 401 answer when it may not."""
        auth = self.security.auth
        if auth is None:
            return None
        header = request.headers.get("authorization")
        if auth.remembered(header):
            return None
        if header is not None:
            assert self._auth_workers is not None
            connection.phase = AUTH
            if await self._auth_workers.run(partial(auth.verify, header)):
                return None
        return text_response(401, "unauthorized", [("WWW-Authenticate", CHALLENGE)])

    async def _send(self, stream: PlainStream, response: Response, *, head: bool = False) -> None:
        stream.write(response.encode(head=head))
        await self._drain_and_close(stream.writer, stream.close)

    async def _drain_and_close(
        self, writer: asyncio.StreamWriter, close: Callable[[], None]
    ) -> None:
        # No user-space buffering beyond the kernel's: drain() returns once all is sent,
        # so a client that never reads is cut off after send_timeout.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await writer.drain()
        except TimeoutError:
            log.debug("client did not take its response in time")
            return
        close()


class _NoAnswer(Exception):
    """The connection ends without an (encrypted) answer."""


async def _read_request(stream: PlainStream) -> Request | None:
    """The next request head; None on EOF before it completed; HttpError if refused."""
    buffer = HeadBuffer()
    while True:
        chunk = await stream.read()
        if not chunk:
            return None
        head = buffer.feed(chunk)
        if head is not None:
            return parse_head(head)
