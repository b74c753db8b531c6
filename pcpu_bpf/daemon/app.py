"""What the exporter answers: /metrics (negotiated like prometheus_client's), /, and errors."""

from __future__ import annotations

import gzip

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporters.prometheus import PcpuCollector
from pcpu_bpf.daemon.http import Request, Response, text_response
from pcpu_bpf.daemon.source import ScrapeSource

METHODS = ("GET", "HEAD")
METRICS_PATH = "/metrics"

_LANDING = b"""<html><head><title>pcpu-bpf</title></head><body>
<h1>pcpu-bpf</h1><p>Percpu allocator profiler. <a href="/metrics">Metrics</a></p>
</body></html>
"""


def make_registry(source: ScrapeSource) -> CollectorRegistry:
    """A private registry: the pcpu_ catalog, the kernel stats' age, this process's CPU and
    memory."""
    registry = CollectorRegistry()
    registry.register(PcpuCollector(source.snapshot))
    ProcessCollector(registry=registry)
    return registry


def quick_response(request: Request) -> Response | None:
    """The answer when it needs no snapshot (405, 404, the landing page); None for /metrics."""
    if request.method not in METHODS:
        return text_response(405, "use GET or HEAD", [("Allow", ", ".join(METHODS))])
    if request.path == METRICS_PATH:
        return None
    if request.path == "/":
        return Response(200, [("Content-Type", "text/html; charset=utf-8")], _LANDING)
    return text_response(404, "not found; metrics are at /metrics")


def metrics_response(registry: CollectorRegistry, request: Request) -> Response:
    """/metrics in the format the Accept header asks for, gzipped when accepted."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    names = request.query.get("name[]")
    output = encoder(registry.restricted_registry(names) if names else registry)
    headers = [("Content-Type", content_type)]
    if gzip_accepted(request.headers.get("accept-encoding", "")):
        output = gzip.compress(output)
        headers.append(("Content-Encoding", "gzip"))
    return Response(200, headers, output)
