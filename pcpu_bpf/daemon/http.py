"""The little HTTP/1.x the exporter speaks: a bounded request head in, one response out.

Requests are GET or HEAD of a path with no body; every response closes the connection.
A head that is too long is refused with the status saying which part was too long
(414 for the request line, 431 for the header lines), never buffered whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

MAX_REQUEST_LINE = 8192  # bytes, CRLF included
MAX_HEADER_BYTES = 16384  # all header lines together
MAX_HEADERS = 100

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """A request the server refuses, with the status to answer it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head; header names are lower case."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Response:
    """Status, headers and body of one response."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    def encode(self, *, head: bool = False) -> bytes:
        """The bytes on the wire; ``head`` drops the body but keeps its Content-Length."""
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if head else self.body)


def text_response(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A plain-text response, e.g. for errors."""
    content = [("Content-Type", "text/plain; charset=utf-8"), *headers]
    return Response(status, content, message.encode() + b"\n")


class HeadBuffer:
    """Collects a request head as bytes arrive, refusing it as soon as it is too long."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, chunk: bytes) -> bytes | None:
        """Add ``chunk``; the complete head once its blank line arrived, else None."""
        self._data += chunk
        end = self._data.find(b"\r\n\r\n")
        size = len(self._data) if end < 0 else end + 4
        line_end = self._data.find(b"\n")
        if (line_end < 0 and size > MAX_REQUEST_LINE) or line_end >= MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long")
        if size > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
            raise HttpError(431, "request headers too large")
        return None if end < 0 else bytes(self._data[:end])


def parse_head(head: bytes) -> Request:
    """Parse a request head (without its final blank line); HttpError(400) if malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, _ = parts
    if len(header_lines) > MAX_HEADERS:
        raise HttpError(431, "too many header lines")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    try:
        split = urlsplit(target)
    except ValueError:  # "//[" and the like: an IPv6 authority never closed
        raise HttpError(400, "malformed request target") from None
    if not method.isalpha() or not split.path.startswith("/"):
        raise HttpError(400, "malformed request target")
    return Request(method, unquote(split.path), parse_qs(split.query), headers)
