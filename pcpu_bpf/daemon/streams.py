"""A connection's bytes, in clear or through TLS, as the HTTP server reads and writes them.

TLS runs over the connection's own stream through ssl.MemoryBIO rather than asyncio's
TLS transport, so that the server sees a connection from its first byte: a handshake is
held to the same connection bound and the same deadline as a request head (a client
that stalls mid-handshake is dropped like one that stalls mid-head), and plain HTTP sent
to a TLS port is told so in clear, as Go's servers do, instead of a silent close.
"""

from __future__ import annotations

import asyncio
import ssl

READ_CHUNK = 4096
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a ClientHello


class PlainHttpToTls(Exception):
    """The client spoke plain HTTP to a TLS port."""


class PlainStream:
    """The connection as it is."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        """The next bytes; b"" at the end."""
        return await self.reader.read(READ_CHUNK)

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending."""
        self.writer.write(data)

    async def drain(self) -> None:
        """Wait until what was written has gone to the kernel."""
        await self.writer.drain()

    def close(self) -> None:
        """Close once what was written is sent."""
        self.writer.transport.close()


class TlsStream(PlainStream):
    """TLS, server side, over a plain stream."""

    def __init__(
        self,
        context: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(reader, writer)
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.ready = False  # the handshake completed: answers can be sent

    async def handshake(self) -> None:
        """Complete the handshake; PlainHttpToTls, ssl.SSLError or ConnectionError if not."""
        first = await self.reader.read(READ_CHUNK)
        if not first:
            raise ConnectionResetError("closed before a TLS handshake")
        if first[0] != TLS_HANDSHAKE_RECORD and first[:1].isupper():
            raise PlainHttpToTls  # a request line: "GET /metrics HTTP/1.1"
        self._incoming.write(first)
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionResetError("closed during the TLS handshake") from None
                self._incoming.write(data)
            else:
                self._flush()
                self.ready = True
                return

    async def read(self) -> bytes:
        while True:
            try:
                return self._tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                self._flush()  # TLS 1.3 may have something to say first
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    return b""
                self._incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def close(self) -> None:
        # Say close_notify without waiting for the client's: the response is complete
        # (Content-Length, Connection: close) whether or not the client answers it.
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass
        self._flush()
        super().close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.writer.write(data)


def plain_to_tls_answer() -> bytes:
    """What a client that sent plain HTTP to the TLS port is told, in clear."""
    body = b"Client sent an HTTP request to an HTTPS server.\n"
    return (
        b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
