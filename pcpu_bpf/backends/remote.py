"""The remote backend: Snapshots read from a running daemon's /metrics.

`pcpu-top --from URL` uses it, so a table can show what `pcpu-bpf serve` has counted since
it started without loading a second set of BPF programs. The exposition is read back
through the metric catalog (exporters/exposition.py), so nothing is lost on the way but
percpu_stats' per-chunk lines, which the daemon exports as totals only.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from exporters.exposition import read_exposition
from pcpu_bpf.backends.base import Backend
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.model.snapshot import Snapshot

DEFAULT_URL = "http://127.0.0.1:9717/metrics"
# Ask for the classic text format: the reader parses it, not OpenMetrics.
_ACCEPT = "text/plain; version=0.0.4"
# A daemon with 4,096 call sites answers with a few MiB; anything far larger is not one.
MAX_BODY_BYTES = 64 << 20
_CHUNK = 1 << 16


def normalize_url(url: str) -> str:
    """Accept "host:port", "http://host:port" or a full URL; default the path to /metrics."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: "host:port" must be a number
    except ValueError as exc:
        raise PcpuError(f"--from: not a valid URL: {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PcpuError(f"--from: not an http URL: {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def fetch_metrics(
    url: str, timeout: float = 5.0, *, max_bytes: int = MAX_BODY_BYTES, deadline: float = 10.0
) -> str:
    """GET ``url`` and return the exposition text; any failure is a one-line PcpuError.

    Bounded: at most ``max_bytes`` of body and ``deadline`` seconds in all (``timeout``
    bounds each read), and redirects are not followed: what answers must be the daemon.
    """
    request = urllib.request.Request(url, headers={"Accept": _ACCEPT})
    give_up = time.monotonic() + deadline
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = _read_bounded(response, url, max_bytes, give_up)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response, and with it the socket
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "elsewhere")
            raise PcpuError(
                f"{url}: HTTP {exc.code} to {where}: redirects are not followed"
            ) from None
        raise PcpuError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise PcpuError(
            f"cannot reach {url}: {exc.reason} (is `pcpu-bpf serve` running there?)"
        ) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # timeouts, resets, malformed responses
        raise PcpuError(f"cannot read {url}: {exc}") from exc
    return body.decode("utf-8", errors="replace")


def _read_bounded(
    response: http.client.HTTPResponse, url: str, limit: int, give_up: float
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PcpuError(f"{url}: response larger than {limit} bytes: not a pcpu-bpf daemon?")
        if time.monotonic() > give_up:
            raise PcpuError(f"{url}: response still arriving after the deadline: gave up")
        chunks.append(chunk)
    return b"".join(chunks)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx surfaces as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


class RemoteBackend(Backend):
    """A Backend whose Snapshots are scrapes of a running daemon's /metrics."""

    name = "remote"

    def __init__(
        self, url: str, *, clock: Callable[[], float] = time.monotonic, timeout: float = 5.0
    ) -> None:
        self.url = normalize_url(url)
        self.netloc = urllib.parse.urlsplit(self.url).netloc
        self._clock = clock
        self._timeout = timeout
        # Not an interval: a daemon's counters and live numbers start with the daemon.
        self.banner = (
            f"Reading {self.netloc} (counts since the daemon started)... Hit Ctrl-C to end."
        )

    @property
    def label(self) -> str:
        return f"daemon {self.netloc}"

    def snapshot(self) -> Snapshot:
        text = fetch_metrics(self.url, self._timeout)
        # The exposition carries no time of its own; the scrape's moment is the timestamp.
        return read_exposition(text, self._clock())
