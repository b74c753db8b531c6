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
