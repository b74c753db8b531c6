"""`pcpu-bpf serve` as a process: serving, signals, errors, --check, sd_notify, journald."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon, error_lines, free_port, parse, prog_ids, run
from waiting import wait_until

from pcpu_bpf import __version__
from pcpu_bpf.daemon.listener import ListenAddress, parse_listen
from pcpu_bpf.daemon.systemd import sd_notify, watchdog_interval


@pytest.fixture
def sim_daemon() -> Iterator[Daemon]:
    daemon = Daemon("--backend", "sim", "--scenario", "netns-churn")
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9717", ListenAddress("127.0.0.1", 9717)),
        ("[::1]:9717", ListenAddress("::1", 9717)),
        (":9717", ListenAddress("0.0.0.0", 9717)),
        ("localhost:0", ListenAddress("localhost", 0)),
    ],
)
def test_parse_listen(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9717", "host:", "::1:9717", "h:99999", "h:+1", "h:٣"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": pid}) == 0.0005


def test_sd_notify_without_socket_is_a_no_op() -> None:
    assert sd_notify("READY=1", {}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/sock"}) is False


def test_serves_metrics_that_move(sim_daemon: Daemon) -> None:
    first = parse(sim_daemon.scrape())
    info = {("version", __version__), ("backend", "sim"), ("kernel", "simulated-6.18")}
    assert first[("pcpu_exporter_info", frozenset(info))] == 1
    assert ("process_resident_memory_bytes", frozenset()) in first

    def total(samples: dict) -> float:
        return sum(v for (n, _), v in samples.items() if n == "pcpu_allocations_total")

    assert total(first) > 0
    wait_until(
        lambda: total(parse(sim_daemon.scrape())) > total(first),
        what="pcpu_allocations_total to grow",
    )


def test_landing_page_and_404(sim_daemon: Daemon) -> None:
    import urllib.error
    import urllib.request

    root = sim_daemon.url.removesuffix("metrics")
    with urllib.request.urlopen(root, timeout=5) as response:
        assert b'href="/metrics"' in response.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(root + "nope", timeout=5)
    assert info.value.code == 404
    info.value.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_promptly(sim_daemon: Daemon, sig: int) -> None:
    code, err = sim_daemon.stop(sig)
    assert code == 0, err
    assert f"{signal.Signals(sig).name} received" in err


def test_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--backend", "sim", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--backend", "nope"], 2, "Error: unknown backend 'nope'; choose one of: bpf, sim"),
        (
            ["--listen", "nowhere"],
            2,
            "Error: listen address 'nowhere' is not HOST:PORT (e.g. 127.0.0.1:9717)",
        ),
        (["--backend", "sim", "--listen", "no.such.host.invalid:1"], 1, None),
        (["--backend", "sim", "--scenario", "nope"], 2, None),
    ],
)
def test_bad_configuration_is_one_line(args: list[str], code: int, message: str | None) -> None:
    result = run("serve", *args)
    assert result.returncode == code
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    if message is not None:
        assert lines == [message]


def test_environment_variables_configure_serve() -> None:
    port = free_port()
    result = run(
        "serve",
        "--check",
        env={"PCPU_SERVE_BACKEND": "sim", "PCPU_SERVE_LISTEN": f"127.0.0.1:{port}"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: backend sim")


def test_check_reports_one_line_and_exits() -> None:
    result = run("serve", "--backend", "sim", "--scenario", "leak", "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("ok: backend sim, kernel simulated-6.18, attached no BPF")
    assert result.stdout.rstrip().endswith("; detached")


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").exists():
        pytest.skip("no IPv6 on this machine")
    daemon = Daemon("--backend", "sim", host="::1")
    try:
        daemon.wait_ready()
        assert "pcpu_exporter_info" in daemon.scrape()
        assert daemon.stop()[0] == 0
    finally:
        daemon.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_socket_gets_ready_watchdog_stopping(tmp_path: Path, abstract: bool) -> None:
    name = (
        f"@pcpu-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:] if abstract else name)
        sock.settimeout(30)
        env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"}
        daemon = Daemon("--backend", "sim", env=env)
        try:
            messages: list[str] = []
            while "READY=1" not in messages:
                messages += sock.recv(4096).decode().split("\n")
            # READY=1 comes only once the server listens: a scrape works right away.
            assert "pcpu_exporter_info" in daemon.scrape()
            assert any(m.startswith("STATUS=binding") for m in messages)
            pings = 0
            while pings < 2:
                pings += sock.recv(4096) == b"WATCHDOG=1"
            code, err = daemon.stop()
            assert code == 0, err
            rest = []
            sock.settimeout(1)
            while True:
                try:
                    rest += sock.recv(4096).decode().split("\n")
                except TimeoutError:
                    break
            assert "STOPPING=1" in rest
        finally:
            daemon.close()


def test_journald_stream_gets_priorities_and_no_timestamps() -> None:
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    daemon = Daemon("--backend", "sim", env=env, stderr=write_fd)
    os.close(write_fd)
    try:
        daemon.wait_ready()
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.close()
    with os.fdopen(read_fd) as pipe:
        lines = pipe.read().splitlines()
    assert "<6>pcpu_bpf.daemon.server: SIGTERM received" in lines
    assert all(line.startswith("<") for line in lines)


@pytest.mark.privileged
@pytest.mark.needs_tool("bpftool")
def test_sigterm_keeps_the_pinned_set_and_detach_removes_it() -> None:
    pin_dir = Path(f"/sys/fs/bpf/pcpu-bpf-test-{os.getpid()}-detach")
    daemon = Daemon("--backend", "bpf", "--pin-dir", str(pin_dir))
    try:
        daemon.wait_ready()
        ids = prog_ids(daemon.proc.pid)
        assert len(ids) >= 5
        code, err = daemon.stop()
        assert code == 0, err
    finally:
        daemon.close()
    assert ids <= loaded_prog_ids(), "SIGTERM must keep the pinned programs attached"
    assert "the set stays pinned" in err
    result = run("detach", "--pin-dir", str(pin_dir))
    assert result.returncode == 0, result.stderr
    assert "20 pins (5 links, 5 programs, 10 maps)" in result.stdout
    assert not pin_dir.exists()
    # The last link's release is deferred to a workqueue by the kernel: wait for it.
    wait_until(
        lambda: not (ids & loaded_prog_ids()),
        what=lambda: f"programs still loaded after detach: {sorted(ids & loaded_prog_ids())}",
    )
    again = run("detach", "--pin-dir", str(pin_dir))
    assert again.returncode == 0 and "nothing pinned" in again.stdout


def loaded_prog_ids() -> set[int]:
    """Every BPF program id the kernel has loaded, as bpftool lists them."""
    shown = subprocess.run(
        ["bpftool", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(line.split(":")[0]) for line in shown.splitlines() if line[:1].isdigit()}


@pytest.mark.privileged
def test_bpf_check_attaches_and_detaches() -> None:
    result = run("serve", "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: backend bpf")
    assert "attached 5 BPF programs" in result.stdout


def test_watchdog_probe_sees_a_stuck_snapshot() -> None:
    import threading

    from pcpu_bpf.backends.base import Backend
    from pcpu_bpf.daemon.source import ScrapeSource

    entered, release = threading.Event(), threading.Event()

    class Stuck(Backend):
        def snapshot(self):  # type: ignore[override]
            entered.set()
            release.wait(60)
            raise RuntimeError("never returns a snapshot")

    source = ScrapeSource(Stuck(), window=0)
    assert source.responsive(timeout=0.1)
    scrape = threading.Thread(target=lambda: pytest.raises(RuntimeError, source.snapshot))
    scrape.start()
    assert entered.wait(60)
    try:
        # Stuck for 0.2 s: no WATCHDOG=1, systemd restarts us.
        wait_until(lambda: not source.responsive(timeout=0.2), what="the probe to see it stuck")
    finally:
        release.set()
        scrape.join()
    assert source.responsive(timeout=0.1)
