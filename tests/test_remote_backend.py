"""The remote backend: what `pcpu-top --from` accepts as a daemon's address, and its errors."""

from __future__ import annotations

import pytest

from pcpu_bpf.backends.remote import RemoteBackend, normalize_url
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
