"""`pcpu-bpf serve` against abusive clients and scrape storms: bounded connections, heads,
memory and kernel reads; SIGHUP; a busy port found before attaching."""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from daemon_helpers import Daemon, error_lines, parse, run
from waiting import wait_until

from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.daemon.http_server import Limits
from pcpu_bpf.daemon.listener import ListenAddress, bind, bound_address
from pcpu_bpf.daemon.server import serve
from pcpu_bpf.kernel.reader import KernelStatsReader
from pcpu_bpf.kernel.shared_read import SharedRead
from pcpu_bpf.model.snapshot import KernelStats, Snapshot

FIXTURES = Path(__file__).parent / "fixtures"
MAX_CONNECTIONS = 200
IDLE, SLOW = 500, 500


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raise_own_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file limit {hard} is below the {needed} this test holds")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` raw, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def guarded() -> Iterator[Daemon]:
    notify = f"@pcpu-guard-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + notify[1:])
        daemon = Daemon(
            "--backend",
            "sim",
            "--max-connections",
            str(MAX_CONNECTIONS),
            env={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "400000"},
        )
        daemon.notify = sock  # type: ignore[attr-defined]
        try:
            daemon.wait_ready()
            yield daemon
        finally:
            daemon.close()


def wait_for_pings(sock: socket.socket, count: int) -> None:
    sock.settimeout(30)
    pings = 0
    while pings < count:
        pings += sock.recv(4096) == b"WATCHDOG=1"


def test_idle_and_slow_clients_cannot_stop_a_scrape(guarded: Daemon) -> None:
    raise_own_fd_limit(IDLE + SLOW + 100)
    pid, port = guarded.proc.pid, guarded.port
    fds_before, threads_before = fd_count(pid), thread_count(pid)
    held: list[socket.socket] = []
    try:
        for i in range(IDLE + SLOW):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
            if i >= IDLE:  # slowloris: a head that never ends
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for sock in held[IDLE:]:
            try:
                sock.sendall(b"a")  # still sending, slowly
            except (BrokenPipeError, ConnectionResetError):
                pass  # already dropped to make room
        # Accepts are in arrival order: this scrape comes after every connection above.
        start = time.monotonic()
        body = guarded.scrape()
        elapsed = time.monotonic() - start
        assert "pcpu_exporter_info" in body
        assert elapsed < 1.0, f"a scrape took {elapsed:.2f} s behind {len(held)} clients"
        # The bound holds: one fd per connection held, never one per client, no thread.
        assert fd_count(pid) <= fds_before + MAX_CONNECTIONS + 2
        assert thread_count(pid) == threads_before
        wait_for_pings(guarded.notify, 2)  # type: ignore[attr-defined]
    finally:
        for sock in held:
            sock.close()
    assert guarded.stop()[0] == 0


def test_oversized_heads_are_refused_without_growing(guarded: Daemon) -> None:
    port = guarded.port
    long_line = b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n"
    assert status(request(port, long_line)) == 414
    big_headers = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"b" * 30_000 + b"\r\n\r\n"
    assert status(request(port, big_headers)) == 431
    many_headers = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n"
    assert status(request(port, many_headers)) == 431
    assert status(request(port, b"GARBAGE\r\n\r\n")) == 400
    endless = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"c" * (4 << 20)
    request(port, endless)  # warm up whatever a first big read allocates
    before = rss_bytes(guarded.proc.pid)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: request(port, endless), range(32)))
    assert {status(a) for a in answers if a} <= {431}
    grown = rss_bytes(guarded.proc.pid) - before
    assert grown < 8 << 20, f"RSS grew {grown} bytes for 128 MiB of refused headers"
    assert "pcpu_exporter_info" in guarded.scrape()


def test_paths_and_methods(guarded: Daemon) -> None:
    port = guarded.port
    assert status(request(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")) == 404
    assert status(request(port, b"GET /metrics/x HTTP/1.0\r\n\r\n")) == 404
    answer = request(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status(answer) == 405 and b"Allow: GET, HEAD" in answer
    head = request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status(head) == 200 and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: " in head
    landing = request(port, b"GET / HTTP/1.1\r\n\r\n")
    assert status(landing) == 200 and b'href="/metrics"' in landing


def test_gzip_and_openmetrics_are_negotiated(guarded: Daemon) -> None:
    import gzip

    req = urllib.request.Request(guarded.url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(response.read()).decode()
    assert "pcpu_exporter_info" in parse(text).__repr__()
    accept = "application/openmetrics-text; version=1.0.0"
    req = urllib.request.Request(guarded.url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().endswith(b"# EOF\n")


def test_a_head_that_never_completes_times_out() -> None:
    backend = SimBackend("steady")
    listener = bind(ListenAddress("127.0.0.1", 0))
    port = bound_address(listener).port
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(backend, listener, stop), kwargs={"limits": Limits(head_timeout=0.2)}
    )
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
    finally:
        stop.set()
        thread.join(10)


class CountingReader(KernelStatsReader):
    """The real kernel-stats reader over fixture files, counting its reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(debugfs_root=root, proc_root=FIXTURES / "proc" / "live-6.18")
        self.calls = 0

    def __call__(self) -> KernelStats:
        self.calls += 1
        return super().__call__()


class SimReadingKernelStats(SimBackend):
    """The simulated workload, with kernel stats from a throttled reader and timestamps on
    its clock, as the bpf backend has them; ``snapshots`` counts the snapshots taken."""

    def __init__(self, kernel_stats: SharedRead[KernelStats | None]) -> None:
        super().__init__("steady")
        self._kernel_stats = kernel_stats
        self.snapshots = 0

    def snapshot(self) -> Snapshot:
        self.snapshots += 1
        return dataclasses.replace(
            super().snapshot(), kernel_stats=self._kernel_stats(), timestamp=time.monotonic()
        )


def test_scrape_storm_reads_the_kernel_once(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "percpu_stats" / "live-6.18.txt", tmp_path / "percpu_stats")
    reader = CountingReader(tmp_path)
    kernel_reads: SharedRead[KernelStats | None] = SharedRead(reader, 60.0)
    backend = SimReadingKernelStats(kernel_reads)
    listener = bind(ListenAddress("127.0.0.1", 0))
    url = f"http://{bound_address(listener)}/metrics"
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(backend, listener, stop),
        kwargs={"min_read_interval": 60.0},
    )
    thread.start()
    barrier = threading.Barrier(20)

    def scrape(_: int) -> str:
        barrier.wait()
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
        return body.decode()

    try:
        with ThreadPoolExecutor(20) as pool:
            bodies = list(pool.map(scrape, range(20)))
        assert all("pcpu_stats_chunks" in b for b in bodies)
        assert reader.calls == 1
        assert backend.snapshots <= 2  # one, or two when the burst straddles the share window
        # Later scrapes take new snapshots (the counters move) but not a new kernel read.
        first = backend.snapshots

        def new_snapshot() -> dict | None:
            with urllib.request.urlopen(url, timeout=10) as response:
                samples = parse(response.read().decode())
            return samples if backend.snapshots > first else None

        samples = wait_until(new_snapshot, what="a scrape after the share window")
        assert reader.calls == 1
        age = samples[("pcpu_kernel_stats_age_seconds", frozenset())]
        assert age > 0
    finally:
        stop.set()
        thread.join(10)


def test_sighup_is_logged_and_ignored(guarded: Daemon) -> None:
    guarded.proc.send_signal(signal.SIGHUP)
    assert "pcpu_exporter_info" in guarded.scrape()
    code, err = guarded.stop()
    assert code == 0, err
    assert "SIGHUP received: nothing to reload, ignored" in err
    assert "Traceback" not in err


def test_busy_port_is_found_before_attaching() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # The bpf backend would compile for seconds (or fail without root): it never starts.
        result = run("serve", "--backend", "bpf", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "starting backend" not in result.stderr


def test_cli_hands_the_bpf_backend_its_read_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    import pcpu_bpf.backends.bpf as bpf_backend
    from pcpu_bpf.cli import main
    from pcpu_bpf.cli import serve as serve_cli

    given: dict[str, object] = {}

    def fake_bpf_backend(**options: object) -> SimBackend:
        given.update(options)
        return SimBackend("steady")

    monkeypatch.setattr(bpf_backend, "BpfBackend", fake_bpf_backend)
    monkeypatch.setattr(serve_cli.signal, "signal", lambda *_: None)  # keep pytest's SIGHUP
    result = CliRunner().invoke(
        main, ["serve", "--backend", "bpf", "--check", "--min-read-interval", "7.5"]
    )
    assert result.exit_code == 0, result.output
    assert given["min_read_interval"] == 7.5
