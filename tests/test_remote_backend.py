"""The remote backend: what `pcpu-top --from` accepts as a daemon's address, and its errors."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from exporters.exposition import read_exposition
from pcpu_bpf.backends.remote import RemoteBackend, fetch_metrics, normalize_url
from pcpu_bpf.errors import PcpuError


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("127.0.0.1:9717", "http://127.0.0.1:9717/metrics"),
        ("http://127.0.0.1:9717", "http://127.0.0.1:9717/metrics"),
        ("http://127.0.0.1:9717/", "http://127.0.0.1:9717/metrics"),
        ("http://[::1]:9717/metrics", "http://[::1]:9717/metrics"),
        ("https://host/pcpu/metrics?x=1", "https://host/pcpu/metrics?x=1"),
    ],
)
def test_normalize_url(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/metrics", "not an http URL"),
        ("http://", "not an http URL"),
        ("file:///etc/passwd", "not an http URL"),
        ("http://[::1", "not a valid URL"),
        ("http://127.0.0.1:port", "not a valid URL"),
    ],
)
def test_normalize_url_rejects(url: str, why: str) -> None:
    with pytest.raises(PcpuError, match=why):
        normalize_url(url)


def test_metrics_source_reports_an_unreachable_daemon() -> None:
    # Port 9 (discard) on loopback: nothing listens there on these machines.
    source = RemoteBackend("127.0.0.1:9", timeout=2.0)
    with pytest.raises(PcpuError, match=r"cannot reach http://127.0.0.1:9/metrics: .*serve"):
        source.snapshot()


class _Abuse(BaseHTTPRequestHandler):
    """A server that is not a daemon: huge, endless, dripping, redirecting, HTML, binary or
    another exporter's bodies; errors; silence; a reset."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        kind = self.path.strip("/")
        if kind == "silent":  # accepts, reads the request, never answers
            time.sleep(3)
            return
        if kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if kind == "error":
            self.send_error(500, "broken")
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/metrics")
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        if kind == "html":
            self.wfile.write(b"<html><body>hello</body></html>")
        elif kind == "garbage":
            self.wfile.write(bytes(range(256)) * 64)
        elif kind == "other-exporter":
            self.wfile.write(b"# TYPE up gauge\nup 1\nnode_load1 0.5\n")
        elif kind == "bad-pcpu":  # our families, values that are no counts
            self.wfile.write(
                b'pcpu_exporter_info{backend="bpf",kernel="x",version="1"} 1\n'
                b'pcpu_allocations_total{atomic="maybe",call_site="x",reserved="false"} NaN\n'
            )
        elif kind == "huge":
            self.wfile.write(b"#" * (2 << 20))
        elif kind == "endless":
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b"# more\n" * 4096)
        elif kind == "drip":
            with contextlib.suppress(OSError):
                for _ in range(100):
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    time.sleep(0.2)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def abusive() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Abuse)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("html", "not a pcpu-bpf exposition"),
        ("huge", "larger than"),
        ("endless", "larger than"),
        ("drip", "after the deadline"),
        ("redirect", "redirects are not followed"),
        ("garbage", "not a pcpu-bpf exposition"),
        ("other-exporter", "no pcpu_exporter_info"),
        ("bad-pcpu", "not a pcpu-bpf exposition"),
        ("silent", "timed out"),
        ("reset", "cannot read"),
        ("error", "HTTP 500"),
    ],
)
def test_a_server_that_is_not_a_daemon_is_one_bounded_error(
    abusive: str, path: str, message: str
) -> None:
    with pytest.raises(PcpuError, match=message):
        fetched = fetch_metrics(f"{abusive}/{path}", timeout=0.5, max_bytes=1 << 20, deadline=1.0)
        read_exposition(fetched, 0.0)


@pytest.mark.parametrize(
    "path",
    ["html", "huge", "endless", "redirect", "garbage", "other-exporter", "bad-pcpu", "reset"],
)
def test_pcpu_top_from_a_server_that_is_not_a_daemon_is_one_line(abusive: str, path: str) -> None:
    from click.testing import CliRunner

    from pcpu_bpf.cli.top import main

    result = CliRunner().invoke(main, ["--from", f"{abusive}/{path}", "0.1", "1"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error:"), result.stderr
