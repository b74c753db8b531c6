"""The listening socket: parsed from HOST:PORT and bound before anything else starts."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pcpu_bpf.errors import ListenError

DEFAULT_LISTEN = "127.0.0.1:9717"
# Connections the kernel completes and queues before the daemon accepts them: enough
# for every scraper of a large fleet arriving at once (the kernel caps it at somaxconn).
BACKLOG = 1024


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


def bind(listen: ListenAddress) -> socket.socket:
    """A listening, non-blocking socket on ``listen``; ListenError with the reason (port in
    use, no such address)."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except (OSError, UnicodeError) as exc:
        if sock is not None:
            sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ListenError(f"cannot listen on {listen}: {reason}") from exc
    return sock


def bound_address(sock: socket.socket) -> ListenAddress:
    """The address really bound (port 0 becomes the port the kernel chose)."""
    host, port = sock.getsockname()[:2]
    return ListenAddress(str(host), int(port))
