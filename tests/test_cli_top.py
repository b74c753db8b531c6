"""pcpu-top through CliRunner on the simulator with a fake clock, plus a daemon and a tty."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from waiting import wait_until

from pcpu_bpf.backends import BackendOptions, Constructor
from pcpu_bpf.backends.base import Backend
from pcpu_bpf.backends.remote import RemoteBackend
from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.cli.top import main
from pcpu_bpf.errors import BackendUnavailable, PcpuError, ProgramLoadError
from pcpu_bpf.model.snapshot import SiteKey, SiteRecord, Snapshot
from pcpu_bpf.top.render import WIDTH, table_lines
from pcpu_bpf.top.run import CLEAR, HELP_LINE, TopDeps, TopOptions, run_top
from pcpu_bpf.top.view import build_view, sort_rows
from pcpu_bpf.units import fit

BANNER = Backend.banner

SCENARIOS = [
    "steady",
    "netns-churn",
    "memcg-churn",
    "bpf-maps",
    "leak",
    "atomic-pressure",
    "chunk-churn",
    "fragmentation",
]
BIN = Path(sys.executable).parent


class FakeClock:
    """Monotonic time that only moves when pcpu-top sleeps."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class Recorder(Mapping[str, Constructor]):
    """The backend constructors, recorded: sim and remote on the fake clock; bpf raises
    what it is told."""

    def __init__(self, clock: FakeClock, bpf_error: Exception | None = None) -> None:
        self.clock = clock
        self.bpf_error = bpf_error
        self.opened: list[tuple[str, dict[str, Any]]] = []
        self.backends: list[Backend] = []

    def __getitem__(self, name: str) -> Constructor:
        return lambda options: self.open(name, options)

    def __iter__(self) -> Iterator[str]:
        return iter(("bpf", "sim", "remote"))

    def __len__(self) -> int:
        return 3

    def open(self, name: str, options: BackendOptions) -> Backend:
        self.opened.append((name, options.given()))
        if name == "bpf":
            raise self.bpf_error or AssertionError("tests never load BPF here")
        if name == "remote":
            assert options.url is not None
            return RemoteBackend(options.url, clock=self.clock.now)
        sim = SimBackend(
            clock=self.clock.now,
            scenario=options.scenario or "steady",
            seed=options.seed or 0,
            min_age=options.min_age,
        )
        backend = _Closing(sim)
        self.backends.append(backend)
        return backend


class _Closing(Backend):
    """A sim backend that remembers being closed."""

    name = "sim"

    def __init__(self, inner: SimBackend) -> None:
        self.inner = inner
        self.closed = False

    @property
    def label(self) -> str:
        return self.inner.label

    def snapshot(self):  # type: ignore[no-untyped-def]
        return self.inner.snapshot()

    def started_at(self) -> float | None:
        return self.inner.started_at()

    def close(self) -> None:
        self.closed = True


NOT_ROOT = BackendUnavailable("not root: loading BPF programs needs CAP_BPF and CAP_PERFMON")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def deps(clock: FakeClock) -> TopDeps:
    return TopDeps(
        constructors=Recorder(clock, NOT_ROOT),
        sleep=clock.sleep,
        clock_text=lambda: "12:00:00",
        terminal_lines=lambda: None,
        iso_time=lambda: "2026-11-26T12:00:00+00:00",
    )


def top(runner: CliRunner, deps: TopDeps, *args: str) -> Result:
    return runner.invoke(main, list(args), obj=deps)


def tables(output: str) -> list[list[str]]:
    """Each table's lines, from its clock line to the last row."""
    out: list[list[str]] = []
    for line in output.splitlines():
        if line.startswith("12:00:00  "):
            out.append([])
        if out and line:
            out[-1].append(line)
    return out


def rows(table: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(table) if line.startswith("CALL SITE"))
    return table[start + 1 :]


def test_run_top_takes_a_backend_and_a_stream(deps: TopDeps, clock: FakeClock) -> None:
    out = io.StringIO()
    backend = SimBackend("bpf-maps", clock=clock.now)
    run_top(backend, out, TopOptions(interval=0.5, count=2, source="here"), deps=deps)
    found = tables(out.getvalue())
    # The first window starts when tracing began, and says so.
    assert [t[0] for t in found] == [
        "12:00:00  here  window 0.50s from start  kernel simulated-6.18",
        "12:00:00  here  window 0.50s  kernel simulated-6.18",
    ]
    assert any(r.startswith("bpf_map_alloc_percpu") for r in rows(found[0]))


def test_leak_two_tables(runner: CliRunner, deps: TopDeps, clock: FakeClock) -> None:
    result = top(runner, deps, "--backend", "sim", "--scenario", "leak", "1", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(BANNER + "\n")
    assert result.stderr == ""
    assert clock.sleeps == [1.0, 1.0]
    found = tables(result.stdout)
    assert len(found) == 2
    assert found[0][0] == "12:00:00  sim (leak)  window 1.00s from start  kernel simulated-6.18"
    assert found[1][0] == "12:00:00  sim (leak)  window 1.00s  kernel simulated-6.18"
    for table in found:
        assert table[1].startswith("Percpu ") and " chunks " in table[1]
        assert table[2].startswith("static ") and table[2].endswith(" explained 100%")
        assert " own 1.3K " in table[2]  # the simulated profiler's maps, 684 B x 2 CPUs
        assert table[3].startswith("traced live ")
        assert "leaky_driver_open" in "\n".join(rows(table))
    # The leak grows: its live count in the second table exceeds the first.
    live = [
        int(next(r for r in rows(t) if r.startswith("leaky_driver_open")).split()[3]) for t in found
    ]
    assert live[1] > live[0] > 0
    assert deps.constructors.backends[0].closed  # type: ignore[attr-defined]


def test_deterministic_with_a_fake_clock(runner: CliRunner, clock: FakeClock) -> None:
    outputs = []
    for _ in range(2):
        c = FakeClock()
        d = TopDeps(Recorder(c), c.sleep, lambda: "12:00:00", lambda: None)
        outputs.append(top(runner, d, "--backend", "sim", "--scenario", "netns-churn", "1", "3"))
    assert outputs[0].exit_code == 0
    assert outputs[0].stdout == outputs[1].stdout


def test_defaults_one_table_after_one_second(
    runner: CliRunner, deps: TopDeps, clock: FakeClock
) -> None:
    result = top(runner, deps, "--backend", "sim")
    assert result.exit_code == 0, result.output
    assert clock.sleeps == [1.0]
    assert len(tables(result.stdout)) == 1
    assert deps.constructors.opened == [("sim", {})]  # type: ignore[attr-defined]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_line_under_80_columns(runner: CliRunner, deps: TopDeps, scenario: str) -> None:
    result = top(runner, deps, "--backend", "sim", "--scenario", scenario, "-r", "0", "0.5", "3")
    assert result.exit_code == 0, result.output
    assert rows(tables(result.stdout)[-1])
    assert max(len(line) for line in result.stdout.splitlines()) <= WIDTH


def test_help_fits_and_has_examples(runner: CliRunner, deps: TopDeps) -> None:
    result = top(runner, deps, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "pcpu-top --live" in result.stdout
    assert "fail event names no call" in result.stdout  # why failures get rows of their own
    assert max(len(line) for line in result.stdout.splitlines()) <= WIDTH


def test_json_one_document_per_interval(runner: CliRunner, deps: TopDeps) -> None:
    result = top(runner, deps, "--backend", "sim", "--scenario", "leak", "--json", "2", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3  # no banner: stdout is pure JSON lines
    docs = [json.loads(line) for line in lines]
    assert [d["interval_seconds"] for d in docs] == [2.0, 2.0, 2.0]
    assert all(d["source"] == "sim (leak)" for d in docs)
    assert all(d["time"] == "2026-11-26T12:00:00+00:00" for d in docs)
    leak = [next(s for s in d["sites"] if s["call_site"] == "leaky_driver_open") for d in docs]
    assert leak[0]["live_allocations"] < leak[1]["live_allocations"] < leak[2]["live_allocations"]
    assert all(s["frees_per_second"] == 0 for s in leak)


@pytest.mark.parametrize(
    ("sort", "field"),
    [
        ("live-bytes", "live_bytes"),
        ("allocs", "allocations_per_second"),
        ("frees", "frees_per_second"),
        ("bytes", "allocated_bytes_per_second"),
    ],
)
def test_sort_orders_rows(runner: CliRunner, deps: TopDeps, sort: str, field: str) -> None:
    result = top(
        runner,
        deps,
        "--backend",
        "sim",
        "--scenario",
        "memcg-churn",
        "--json",
        "-s",
        sort,
        "-r",
        "0",
    )
    assert result.exit_code == 0, result.output
    values = [s[field] for s in json.loads(result.stdout)["sites"]]
    assert len(values) >= 3
    assert values == sorted(values, reverse=True)


def test_sort_fails_puts_failure_rows_first(runner: CliRunner, deps: TopDeps) -> None:
    args = ["--backend", "sim", "--scenario", "atomic-pressure", "-r", "0"]
    by_bytes = rows(tables(top(runner, deps, *args).stdout)[0])
    by_fails = rows(tables(top(runner, deps, *args, "-s", "fails").stdout)[0])
    assert by_fails[0].startswith("[failed atomic]")
    assert not by_bytes[0].startswith("[failed")
    assert sorted(by_bytes) != by_bytes or by_bytes != by_fails


@pytest.mark.parametrize(("limit", "expected"), [("1", 1), ("2", 2)])
def test_limit(runner: CliRunner, deps: TopDeps, limit: str, expected: int) -> None:
    result = top(runner, deps, "--backend", "sim", "--scenario", "netns-churn", "-r", limit)
    assert result.exit_code == 0, result.output
    assert len(rows(tables(result.stdout)[0])) == expected
    doc = json.loads(top(runner, deps, "--backend", "sim", "--json", "--limit", limit).stdout)
    assert len(doc["sites"]) == expected


def test_live_redraws_in_place(runner: CliRunner, deps: TopDeps) -> None:
    deps.terminal_lines = lambda: 9  # room for the 3-line header and 4 rows
    result = top(
        runner, deps, "--backend", "sim", "--scenario", "netns-churn", "--live", "0.5", "3"
    )
    assert result.exit_code == 0, result.output
    frames = result.stdout.split(CLEAR)
    assert frames[0] == BANNER + "\n"
    assert len(frames) == 4
    for frame in frames[1:]:
        assert frame.startswith("12:00:00  sim (netns-churn)")
        assert len(frame.splitlines()) <= 9


def test_ctrl_c_exits_cleanly(runner: CliRunner, deps: TopDeps, clock: FakeClock) -> None:
    def sleep(seconds: float) -> None:
        if clock.sleeps:
            raise KeyboardInterrupt
        clock.sleep(seconds)

    deps.sleep = sleep
    deps.terminal_lines = lambda: 24
    result = top(runner, deps, "--backend", "sim", "--live")
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert result.stdout.count(CLEAR) == 1
    assert deps.constructors.backends[0].closed  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("error", "what"),
    [
        (NOT_ROOT, "BPF unavailable (not root: "),
        (ProgramLoadError("x.c:1: error\nmore"), "BPF load failed (x.c:1: error)"),
    ],  # noqa: E501
)
def test_auto_falls_back_to_sim_with_one_line_notice(
    runner: CliRunner, clock: FakeClock, deps: TopDeps, error: Exception, what: str
) -> None:
    deps.constructors = Recorder(clock, error)
    result = top(runner, deps)
    assert result.exit_code == 0, result.output
    notice = result.stderr.splitlines()
    assert len(notice) == 1
    assert notice[0].startswith("pcpu-top: " + what)
    assert notice[0].endswith("; showing the simulator (scenario steady)")
    assert [name for name, _ in deps.constructors.opened] == ["bpf", "sim"]  # type: ignore[attr-defined]
    assert tables(result.stdout)[0][0].startswith("12:00:00  sim (steady)")


def test_naming_a_scenario_picks_the_simulator(
    runner: CliRunner, clock: FakeClock, deps: TopDeps
) -> None:
    deps.constructors = Recorder(clock, None)
    result = top(runner, deps, "--scenario", "leak")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert [name for name, _ in deps.constructors.opened] == ["sim"]  # type: ignore[attr-defined]
    assert tables(result.stdout)[0][0].startswith("12:00:00  sim (leak)")


def test_backend_bpf_unavailable_is_a_one_line_error(runner: CliRunner, deps: TopDeps) -> None:
    result = top(runner, deps, "--backend", "bpf")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: BPF unavailable: not root: loading BPF programs needs CAP_BPF and CAP_PERFMON;"
        " run `pcpu-bpf doctor` for the fix"
    ]
    assert result.stdout == ""


def test_backend_error_during_run_is_one_line(runner: CliRunner, deps: TopDeps) -> None:
    class Broken(Backend):
        def snapshot(self):  # type: ignore[no-untyped-def]
            raise PcpuError("percpu maps vanished\nsecond line")

    deps.constructors = {"sim": lambda options: Broken()}
    result = top(runner, deps, "--backend", "sim")
    assert result.exit_code == 1
    assert result.stderr == "Error: percpu maps vanished\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0"], "INTERVAL"),
        (["-1"], "No such option"),
        (["1", "0"], "COUNT"),
        (["abc"], "INTERVAL"),
        (["--sort", "size"], "--sort"),
        (["--limit", "-3"], "--limit"),
        (["--backend", "ebpf"], "--backend"),
        (["--live", "--json"], "choose one"),
        (["--sizes", "--json"], "choose one"),
        (["--min-age", "-5"], "--min-age"),
        (["--min-age", "nan"], "--min-age"),
        (["--from", "x:1", "--min-age", "60"], "pcpu_live_by_age_bytes"),
        (["--from", "x:1", "--backend", "sim"], "--from"),
        (["--from", "x:1", "--scenario", "leak"], "--from"),
        (["--backend", "bpf", "--scenario", "leak"], "sim backend only"),
        (["--backend", "sim", "--scenario", "nosuch"], "--scenario"),
        (["1", "2", "3"], "unexpected extra argument"),
    ],
)
def test_bad_flags_are_usage_errors(
    runner: CliRunner, deps: TopDeps, args: list[str], message: str
) -> None:
    result = top(runner, deps, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


# --from: a tiny HTTP server standing in for the daemon.

EXPOSITION = """\
# TYPE pcpu_exporter_info gauge
pcpu_exporter_info{{backend="bpf",kernel="6.18.44",version="0.1.0"}} 1
# TYPE pcpu_allocations_total counter
pcpu_allocations_total{{atomic="false",call_site="mm_init",reserved="false"}} {allocs}
pcpu_allocations_total{{atomic="false",call_site="bpf_map_alloc_percpu",reserved="false"}} 1000
# TYPE pcpu_requested_bytes_total counter
pcpu_requested_bytes_total{{atomic="false",call_site="mm_init",reserved="false"}} {requested}
pcpu_requested_bytes_total{bpf_map} 1000000
# TYPE pcpu_allocated_bytes_total counter
pcpu_allocated_bytes_total{{atomic="false",call_site="mm_init",reserved="false"}} {allocated}
pcpu_allocated_bytes_total{bpf_map} 2000000
# TYPE pcpu_frees_total counter
pcpu_frees_total{{atomic="false",call_site="mm_init",reserved="false"}} {frees}
# TYPE pcpu_live_allocations gauge
pcpu_live_allocations{{atomic="false",call_site="mm_init",reserved="false"}} {live}
pcpu_live_allocations{{atomic="false",call_site="bpf_map_alloc_percpu",reserved="false"}} 1000
# TYPE pcpu_live_bytes gauge
pcpu_live_bytes{{atomic="false",call_site="mm_init",reserved="false"}} {live_bytes}
pcpu_live_bytes{{atomic="false",call_site="bpf_map_alloc_percpu",reserved="false"}} 2000000
# TYPE pcpu_allocation_failures_total counter
pcpu_allocation_failures_total{{atomic="false",reserved="false"}} 0
pcpu_allocation_failures_total{{atomic="true",reserved="false"}} {fails}
# TYPE pcpu_meminfo_bytes gauge
pcpu_meminfo_bytes 3145728
"""


def exposition(step: int) -> str:
    allocs, frees = 500 + 40 * step, 480 + 30 * step
    return EXPOSITION.format(
        bpf_map='{atomic="false",call_site="bpf_map_alloc_percpu",reserved="false"}',
        allocs=allocs,
        requested=16 * allocs,
        allocated=64 * allocs,
        frees=frees,
        live=allocs - frees,
        live_bytes=64 * (allocs - frees),
        fails=step,
    )


class _Handler(BaseHTTPRequestHandler):
    bodies: Callable[[], bytes]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = self.server.next_body()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    steps = iter(range(1000))
    server.next_body = lambda: exposition(next(steps)).encode()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_from_reads_a_daemon(runner: CliRunner, deps: TopDeps, metrics_server: str) -> None:
    result = top(runner, deps, "--from", metrics_server, "2", "2")
    assert result.exit_code == 0, result.output
    assert deps.constructors.opened == [("remote", {"url": metrics_server})]  # type: ignore[attr-defined]
    assert result.stdout.startswith(
        f"Reading {metrics_server} (counts since the daemon started)... Hit Ctrl-C to end.\n"
    )
    found = tables(result.stdout)
    assert len(found) == 2
    head = found[0]
    # A daemon's counters began before pcpu-top: the window is between two scrapes.
    assert head[0] == f"12:00:00  daemon {metrics_server}  window 2.00s  kernel 6.18.44"
    assert head[1].startswith("Percpu 3.0 MiB (meminfo)  chunks n/a")
    assert head[2] == "parts: n/a, no meminfo"  # this daemon exports no pcpu_memory_bytes
    # Between scrapes: +40 allocs, +30 frees, +1 failure, over 2 s of the fake clock.
    assert "allocs/s 20.0  frees/s 15.0  fails/s 0.5 (1 total)" in head[3]
    assert rows(head)[0].split() == [
        "bpf_map_alloc_percpu",
        "0",
        "0",
        "1000",
        "1.9",
        "MiB",
        "1000",
        "B",
        "-",
        "-",
    ]
    assert rows(head)[1].split() == [
        "mm_init",
        "20.0",
        "15.0",
        "30",
        "1.9",
        "KiB",
        "16",
        "B",
        "-",
        "-",
    ]
    assert rows(found[1])[2].split()[-1] == "0.5"  # [failed atomic]


def test_from_json(runner: CliRunner, deps: TopDeps, metrics_server: str) -> None:
    result = top(runner, deps, "--from", f"http://{metrics_server}", "--json", "1", "2")
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["totals"]["allocations_per_second"] for d in docs] == [40.0, 40.0]
    assert docs[1]["failures"] == [
        {"atomic": True, "reserved": False, "failures_per_second": 1.0, "failures_total": 2}
    ]


@pytest.mark.parametrize(
    ("url_of", "message"),
    [
        (lambda s: "127.0.0.1:9", "cannot reach http://127.0.0.1:9/metrics"),
        (lambda s: f"http://{s}/nothing", "HTTP 404"),
    ],
)
def test_from_errors_are_one_line(
    runner: CliRunner,
    deps: TopDeps,
    metrics_server: str,
    url_of: Callable[[str], str],
    message: str,
) -> None:
    result = top(runner, deps, "--from", url_of(metrics_server))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0]


# --from against a real `pcpu-bpf serve` subprocess.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    address = f"127.0.0.1:{_free_port()}"
    log = tmp_path / "serve.log"
    # The log goes to a file: an unread pipe would fill up and stall the daemon.
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                str(BIN / "pcpu-bpf"),
                "serve",
                "--backend",
                "sim",
                "--scenario",
                "leak",
                "--listen",
                address,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"pcpu-bpf serve exited: {log.read_text()}")
        try:
            urllib.request.urlopen(f"http://{address}/metrics", timeout=10).close()
        except OSError:
            return False
        return True

    try:
        wait_until(
            answers, timeout=60, what=lambda: f"pcpu-bpf serve to come up: {log.read_text()}"
        )
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_from_a_real_daemon(runner: CliRunner, daemon: str) -> None:
    # Real clock and sleep: the daemon's simulator runs in the background.
    result = runner.invoke(main, ["--from", daemon, "--json", "0.5", "2"])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 2
    assert docs[0]["backend"] == "sim"
    leak = next(s for s in docs[1]["sites"] if s["call_site"] == "leaky_driver_open")
    assert leak["live_allocations"] > 0 and leak["frees_per_second"] == 0
    assert docs[1]["totals"]["allocations_per_second"] > 0
    table = runner.invoke(main, ["--from", daemon, "0.3", "1"])
    assert table.exit_code == 0, table.output
    assert "leaky_driver_open" in table.stdout and f"  daemon {daemon}  " in table.stdout


# What a person sees: the real console script in a pseudo-terminal.


def _read_until(fd: int, done: Callable[[bytes], bool], timeout: float) -> bytes:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while not done(data) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


# Makes the pty the controlling terminal, then runs pcpu-top with SIGINT at its default: a
# suite started in the background or under nohup inherits SIGINT ignored, and an ignored
# signal stays ignored across exec, so ^C would never reach pcpu-top.
PTY_SHIM = (
    "import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def run_in_pty(args: list[str], frames: int, timeout: float = 60) -> tuple[int, str]:
    """Run pcpu-top on a 80x24 pty until ``frames`` redraws, press Ctrl-C, return (rc, text)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    # A new session whose controlling terminal is the pty, so ^C on it sends SIGINT the
    # way a keyboard does (pty.fork would warn in a multi-threaded pytest).
    shim = PTY_SHIM
    proc = subprocess.Popen(
        [sys.executable, "-c", shim, str(BIN / "pcpu-top"), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        close_fds=True,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(slave)
    clear = CLEAR.encode()
    try:
        # Frame n is complete once frame n + 1 has begun.
        seen = _read_until(master, lambda d: d.count(clear) > frames, timeout)
        os.write(master, b"\x03")  # Ctrl-C, typed on the terminal
        seen += _read_until(master, lambda d: False, 10)  # until the child closes it
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, seen.decode(errors="replace")


def _screen(output: str) -> list[str]:
    """The last complete frame: what the terminal showed just before Ctrl-C."""
    return output.replace("\r\n", "\n").split(CLEAR)[-2].splitlines()


def _check_live_session(rc: int, output: str, source: str) -> None:
    assert rc == 0, output
    assert "Traceback" not in output and "Aborted" not in output
    assert output.replace("\r\n", "\n").startswith(BANNER + "\n")
    assert output.count(CLEAR) >= 3, output  # redrawn in place, not scrolled
    screen = _screen(output)
    assert screen[0].split("  ")[1] == source
    assert screen[1].startswith("Percpu ")
    assert "explained " in screen[2]
    assert screen[3].startswith("traced live ")
    assert screen[4].startswith("[") and screen[5].startswith("S static")  # the parts' bar
    assert any(line.startswith("CALL SITE") for line in screen)
    assert screen[-1] == HELP_LINE + "  (sorted by live-bytes)"
    assert len(screen) <= 24
    assert all(len(line) <= WIDTH for line in screen)
    assert "\x1b" not in "".join(screen)  # no escape codes but the clearing itself


def test_live_in_a_pseudo_terminal_sim() -> None:
    rc, output = run_in_pty(["--live", "--backend", "sim", "--scenario", "leak", "0.3"], 3)
    _check_live_session(rc, output, "sim (leak)")
    assert any(line.startswith("leaky_driver_open") for line in _screen(output))


class _TopInPty:
    """pcpu-top --live on the slave side of a pty we keep open, so its terminal modes can
    be read while it runs and after it exits."""

    def __init__(self, *args: str) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        shim = PTY_SHIM
        self.proc = subprocess.Popen(
            [sys.executable, "-c", shim, str(BIN / "pcpu-top"), "--live", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "TERM": "xterm"},
        )

    def lflag(self) -> int:
        import termios

        return int(termios.tcgetattr(self.slave)[3])

    def wait_for_cbreak(self) -> bytes:
        import termios

        seen = _read_until(self.master, lambda d: b"(sorted by" in d, 60)
        assert b"CALL SITE" in seen, seen
        # In cbreak mode while it runs: no echo, keys one at a time.
        wait_until(
            lambda: not self.lflag() & (termios.ECHO | termios.ICANON),
            what="pcpu-top to put the terminal in cbreak mode",
        )
        return seen

    def finish(self) -> tuple[int, int]:
        """The exit status, and the terminal's lflag after the exit."""
        rc = self.proc.wait(timeout=10)
        _read_until(self.master, lambda d: False, 1)
        return rc, self.lflag()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def test_live_keys_switch_views_quit_and_restore_the_terminal() -> None:
    """s switches to the sizes and back, g sorts by growth, q quits at once; afterwards the
    terminal is in the mode it was in (echo and line editing back on)."""
    top_ = _TopInPty("--backend", "sim", "5")
    try:
        top_.wait_for_cbreak()
        # The interval is 5 s: each key redraws at once, without waiting for it.
        os.write(top_.master, b"s")
        seen = _read_until(top_.master, lambda d: b"allocations by requested size" in d, 4)
        assert b"allocations by requested size" in seen and b"CALL SITE" not in seen
        os.write(top_.master, b"s")
        seen = _read_until(top_.master, lambda d: b"CALL SITE" in d, 4)
        assert b"CALL SITE" in seen
        os.write(top_.master, b"g")
        seen = _read_until(top_.master, lambda d: b"(sorted by growth)" in d, 4)
        assert b"(sorted by growth)" in seen
        os.write(top_.master, b"q")
        rc, lflag = top_.finish()
    finally:
        top_.close()
    assert rc == 0
    assert lflag == top_.before[3]  # ECHO and ICANON as they were


@pytest.mark.parametrize(("how", "status"), [("ctrl-c", 0), ("sigterm", 128 + 15)])
def test_live_restores_the_terminal_when_interrupted(how: str, status: int) -> None:
    import signal

    top_ = _TopInPty("--backend", "sim", "5")
    try:
        top_.wait_for_cbreak()
        if how == "ctrl-c":
            os.write(top_.master, b"\x03")  # typed: ISIG stays on in cbreak mode
        else:
            top_.proc.send_signal(signal.SIGTERM)
        rc, lflag = top_.finish()
    finally:
        top_.close()
    assert rc == status
    assert lflag == top_.before[3]


def test_live_when_not_a_terminal_is_plain(runner: CliRunner, deps: TopDeps) -> None:
    # terminal_lines None: stdout is no terminal. Frames follow one another, ASCII only.
    result = top(runner, deps, "--backend", "sim", "--scenario", "memcg-churn", "--live", "1", "4")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and result.stdout.isascii()
    last = tables(result.stdout)[-1]
    assert last[4].startswith("[") and last[5].startswith("S static")
    head = next(line for line in last if line.startswith("CALL SITE"))
    at = head.index("TREND") + len("TREND")
    trends = [line[at - 8 : at] for line in rows(last)]  # the TREND column
    assert all(len(t.strip()) == 4 for t in trends), trends  # four windows so far
    assert HELP_LINE not in result.stdout  # no keys are read without a terminal


def test_sort_growth(runner: CliRunner, deps: TopDeps) -> None:
    args = ["--backend", "sim", "--scenario", "memcg-churn", "-r", "0"]
    doc = json.loads(top(runner, deps, *args, "--json", "-s", "growth").stdout)
    growth = [s["live_bytes_growth"] for s in doc["sites"]]
    assert len(growth) >= 3 and growth == sorted(growth, reverse=True)
    table = tables(top(runner, deps, *args, "-s", "growth").stdout)[0]
    assert "GROWTH" in next(line for line in table if line.startswith("CALL SITE"))
    assert rows(table)[0].split()[6].startswith("+")


def test_min_age_shows_only_what_lived_that_long(
    runner: CliRunner, deps: TopDeps, clock: FakeClock
) -> None:
    # The leak allocates once a simulated second; by 4 s, 3 of its allocations (made at
    # 0.125, 1.125 and 2.125 s) are 1.5 s old or more.
    result = top(
        runner, deps, "--backend", "sim", "--scenario", "leak", "--min-age", "1.5", "4", "1"
    )
    assert result.exit_code == 0, result.output
    assert deps.constructors.opened == [  # type: ignore[attr-defined]
        ("sim", {"scenario": "leak", "min_age": 1.5})
    ]
    table = tables(result.stdout)[0]
    assert "OLD: only allocations live 1.5s or more (--min-age)" in table
    leak = next(r.split() for r in rows(table) if r.startswith("leaky_driver_open"))
    assert leak[3] == "3" and leak[4:6] == ["1.1", "KiB"]  # 3 x 192 B x 2 units
    assert all(not r.startswith("[") for r in rows(table))  # no event rows


def test_sizes_draw_a_histogram(runner: CliRunner, deps: TopDeps) -> None:
    result = top(runner, deps, "--backend", "sim", "--scenario", "netns-churn", "--sizes")
    assert result.exit_code == 0, result.output
    assert "allocations by requested size, in the window" in result.stdout
    assert "CALL SITE" not in result.stdout and "#" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= WIDTH


privileged = pytest.mark.privileged


@privileged
def test_live_in_a_pseudo_terminal_live_kernel() -> None:
    rc, output = run_in_pty(["--live", "--backend", "bpf", "0.5"], 3, timeout=120)
    _check_live_session(rc, output, "bpf")


@privileged
def test_smoke_on_the_live_kernel() -> None:
    """bcc's test_tools_smoke: `timeout 30 pcpu-top 2 1` exits 0 and shows a table.

    A per-CPU map of 7 values of 3000 bytes, made once tracing is attached, gives the
    table a row this test caused (exactly 7 allocations at bpf_map_alloc_percpu,
    one per element); other processes may add to that row, never subtract.
    """
    from pcpu_bpf.bpf import syscalls

    timeout = shutil.which("timeout")
    assert timeout, "coreutils timeout"
    proc = subprocess.Popen(
        [timeout, "30", str(BIN / "pcpu-top"), "2", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    fd = syscalls.create_percpu_array(3000, 7, "pcpu_top_smoke")
    try:
        rest, err = proc.communicate(timeout=40)
    finally:
        syscalls.close(fd)
    assert proc.returncode == 0, err
    assert err == ""  # auto chose bpf: no fallback notice
    assert banner == BANNER + "\n"
    lines = rest.splitlines()
    assert lines[1].split("  ")[1] == "bpf"
    assert " window " in lines[1] and " from attach " in lines[1]  # measured since attach
    assert lines[2].startswith("Percpu ") and "kernel live allocs" in lines[2]
    assert "explained" in lines[3] and " 1.3K " in lines[3]  # own: 684 B x 2 CPUs
    assert lines[4].startswith("traced live ") and " since " in lines[4]
    assert any(line.startswith("CALL SITE") for line in lines)
    row = next(line.split() for line in lines if line.startswith("bpf_map_alloc_percpu "))
    assert int(row[3]) >= 7, rest  # LIVE
    assert all(len(line) <= WIDTH for line in lines)


# The same in tmux, a real terminal emulator: the rendered screen is what a person sees.


# Runs the command and writes its exit status to a file: tmux 3.3 does not always report
# #{pane_dead_status}. A no-op SIGINT handler (reset to the default across exec) keeps
# the wrapper alive while Ctrl-C reaches the command.
_WRAPPER = (
    "import signal, subprocess, sys; signal.signal(signal.SIGINT, lambda *a: None); "
    "rc = subprocess.call(sys.argv[2:]); open(sys.argv[1], 'w').write(str(rc))"
)


class Tmux:
    """A private tmux server (its own socket) with one 80x24 window running ``command``."""

    def __init__(self, command: list[str], status_file: Path) -> None:
        self.base = ["tmux", "-L", f"pcpu-top-test-{os.getpid()}", "-f", os.devnull]
        self.status_file = status_file
        wrapped = [sys.executable, "-c", _WRAPPER, str(status_file), *command]
        shell = " ".join(shlex.quote(arg) for arg in wrapped)
        window = ["new-session", "-d", "-s", "t", "-x", "80", "-y", "24", shell]
        self._run(*window, ";", "set-option", "-t", "t", "remain-on-exit", "on")

    def _run(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def screen(self) -> list[str]:
        return self._run("capture-pane", "-p", "-t", "t").rstrip("\n").splitlines()

    def ctrl_c(self) -> None:
        self._run("send-keys", "-t", "t", "C-c")

    def exit_status(self) -> int | None:
        """The command's exit status once it ended, else None."""
        try:
            return int(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False)


@pytest.mark.needs_tool("tmux")
@pytest.mark.parametrize(
    ("args", "source"),
    [
        (["--backend", "sim", "--scenario", "leak"], "sim (leak)"),
        pytest.param(["--backend", "bpf"], "bpf", marks=pytest.mark.privileged),
    ],
)
def test_live_in_tmux_shows_one_table_redrawn(args: list[str], source: str, tmp_path: Path) -> None:
    tmux = Tmux([str(BIN / "pcpu-top"), "--live", *args, "0.5"], tmp_path / "status")
    try:

        def table_on_screen() -> list[str] | None:
            screen = tmux.screen()
            return screen if any(line.startswith("CALL SITE") for line in screen) else None

        first = wait_until(
            table_on_screen, timeout=60, what=lambda: f"a table on the screen: {tmux.screen()}"
        )
        # A redraw: the clock/interval line changes while the table stays in place.
        later = wait_until(
            lambda: (s := table_on_screen()) and s[0] != first[0] and s,
            what=lambda: f"a redraw: {tmux.screen()}",
        )
        for screen in (first, later):
            assert screen[0].split("  ")[1] == source
            assert screen[1].startswith("Percpu ") and "explained " in screen[2]
            assert screen[3].startswith("traced live ")
            assert screen[7].startswith("CALL SITE")
            assert sum(line.startswith("CALL SITE") for line in screen) == 1  # not scrolled
            assert BANNER not in screen  # cleared by the first redraw
            assert all(len(line) <= WIDTH for line in screen)
        if source.startswith("sim"):
            assert any(line.startswith("leaky_driver_open") for line in later)
        tmux.ctrl_c()
        wait_until(
            lambda: tmux.exit_status() is not None,
            what=lambda: f"pcpu-top to exit on Ctrl-C: {tmux.screen()}",
        )
        assert tmux.exit_status() == 0
        assert not any("Traceback" in line for line in tmux.screen())
    finally:
        tmux.kill()


def test_by_cgroup_shows_the_removed_pods_that_still_hold_the_leak(
    runner: CliRunner, deps: TopDeps
) -> None:
    # Twenty simulated seconds of the leak: its pod restarts every eight opens.
    result = top(runner, deps, "--backend", "sim", "--scenario", "leak", "--by", "cgroup", "20")
    assert result.exit_code == 0, result.output
    (table,) = tables(result.stdout)
    header = next(line for line in table if line.startswith("CGROUP"))
    assert "ALLOCS/s" in header
    labels = [line.split("  ")[0].strip() for line in table[table.index(header) + 1 :]]
    assert "/" in labels
    # A long path is cut in its middle: the deleted mark stays in sight.
    assert "/kubepods/l.. (deleted)" in labels and "/kubepods/leaky-pod-2" in labels


def test_by_owner_json_names_rows_by_owner(runner: CliRunner, deps: TopDeps) -> None:
    result = top(
        runner, deps, "--backend", "sim", "--scenario", "steady", "--by", "owner", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["sites"] and all("owner" in s and "call_site" not in s for s in doc["sites"])


def test_by_cgroup_takes_no_min_age(runner: CliRunner, deps: TopDeps) -> None:
    result = top(runner, deps, "--backend", "sim", "--by", "cgroup", "--min-age", "5")
    assert result.exit_code == 2
    assert "cgroup" in result.stderr and "Traceback" not in result.output


def test_owner_column_beside_the_call_site_when_they_differ() -> None:
    view = build_view(
        Snapshot(backend="bpf", kernel="k", timestamp=0.0),
        Snapshot(
            backend="bpf",
            kernel="k",
            timestamp=1.0,
            sites={
                SiteKey("__percpu_counter_init_many", owner="mm_init"): SiteRecord(3, 48, 96),
                SiteKey("alloc_vfsmnt"): SiteRecord(1, 8, 16),
            },
        ),
    )
    lines = table_lines(sort_rows(view.rows, "allocs"))
    assert lines[0].startswith("CALL SITE       OWNER")
    assert all(len(line) <= WIDTH for line in lines)
    assert lines[1].startswith(fit("__percpu_counter_init_many", 15) + " mm_init")
    assert lines[2].startswith("alloc_vfsmnt    " + " " * 16)
