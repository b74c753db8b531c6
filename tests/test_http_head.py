"""The exporter's request-head parsing: bounded sizes, the right 4xx for each excess."""

from __future__ import annotations

import pytest

from pcpu_bpf.daemon.http import (
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    HeadBuffer,
    HttpError,
    Response,
    parse_head,
)


def feed_all(data: bytes, step: int = 7) -> bytes | None:
    buffer = HeadBuffer()
    head = None
    for i in range(0, len(data), step):
        head = buffer.feed(data[i : i + step])
        if head is not None:
            break
    return head


def test_head_arrives_in_pieces() -> None:
    head = feed_all(b"GET /metrics?name[]=a HTTP/1.1\r\nAccept: text/plain\r\nX: 1\r\nx: 2\r\n\r\n")
    assert head is not None
    request = parse_head(head)
    assert (request.method, request.path) == ("GET", "/metrics")
    assert request.query == {"name[]": ["a"]}
    assert request.headers == {"accept": "text/plain", "x": "1, 2"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET /" + b"a" * MAX_REQUEST_LINE, 414),
        (b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX: " + b"b" * (MAX_HEADER_BYTES + MAX_REQUEST_LINE), 431),
    ],
)
def test_too_long_is_refused_as_it_arrives(data: bytes, code: int) -> None:
    with pytest.raises(HttpError) as info:
        feed_all(data, step=4096)
    assert info.value.status == code


@pytest.mark.parametrize(
    "head",
    [
        b"GET /metrics",
        b"GET /metrics HTTP/2.0",
        b"GET metrics HTTP/1.1",
        b"G=T /metrics HTTP/1.1",
        b"GET /metrics HTTP/1.1\r\nno colon here",
        b"GET /metrics HTTP/1.1\r\n folded: header",
    ],
)
def test_malformed_is_400(head: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(head)
    assert info.value.status == 400


def test_too_many_headers_is_431() -> None:
    with pytest.raises(HttpError) as info:
        parse_head(b"GET / HTTP/1.1" + b"\r\nX: y" * 101)
    assert info.value.status == 431


def test_response_encoding_and_head() -> None:
    response = Response(200, [("Content-Type", "text/plain")], b"body")
    assert response.encode() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
        b"Connection: close\r\n\r\nbody"
    )
    assert response.encode(head=True).endswith(b"Content-Length: 4\r\nConnection: close\r\n\r\n")


def test_full_server_drops_heads_first_then_slow_readers_never_work() -> None:
    import socket

    from prometheus_client import CollectorRegistry

    from pcpu_bpf.daemon.http_server import HEAD, SENDING, WORKING, HttpServer, Limits

    class Transport:
        def __init__(self) -> None:
            self.aborted = False

        def abort(self) -> None:
            self.aborted = True

    with socket.socket() as sock:
        server = HttpServer(sock, CollectorRegistry(), Limits(max_connections=3))
        try:
            made = []
            for phase in (WORKING, SENDING, HEAD):
                connection = _connection(Transport(), phase)
                assert server._admit(connection)
                made.append(connection)
            working, sending, head = made
            assert server._admit(_connection(Transport(), HEAD))  # the head goes first
            assert head.transport.aborted and not sending.transport.aborted
            newest_head = list(server._connections.values())[-1]
            newest_head.phase = WORKING
            assert server._admit(_connection(Transport(), HEAD))  # then the slow reader
            assert sending.transport.aborted and not working.transport.aborted
            for connection in server._connections.values():
                connection.phase = WORKING
            assert not server._admit(_connection(Transport(), HEAD))  # scrapes are kept
            assert (server.evicted, server.refused) == (2, 1)
        finally:
            server.stop()


def _connection(transport: object, phase: str) -> object:
    from pcpu_bpf.daemon.http_server import _Connection

    connection = _Connection(transport)  # type: ignore[arg-type]
    connection.phase = phase
    return connection
