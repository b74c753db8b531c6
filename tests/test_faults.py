"""Faults while the daemon runs: debugfs and tracefs unmounted under it, SIGKILL at any
point (start-up before and after attaching, mid-scrape), SIGTERM during scrapes.

The file systems are unmounted in a private mount namespace the daemon runs in
(`unshare -m`), so the host never loses them. What must hold: a running daemon loses
nothing; one started without debugfs reports pcpu_collector_success{percpu_stats} 0 with
its reason logged once, keeps serving the BPF counters, and recovers once it is
mounted; a new daemon after any kill starts cleanly and adopts the pinned set; a stop
never pulls the backend from under a scrape.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import Daemon, Samples, collector_success, parse
from waiting import wait_until

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.bpf import pins, syscalls
from pcpu_bpf.bpf.maps import PROGRAMS
from pcpu_bpf.daemon.listener import ListenAddress, bind, bound_address
from pcpu_bpf.daemon.server import serve
from pcpu_bpf.model.snapshot import Snapshot

SITE = "bpf_map_alloc_percpu"
LOADER = "pcpu_bpf.bpf.loader"


def site_allocations(samples: Samples) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "pcpu_allocations_total" and ("call_site", SITE) in labels
    )


def start_time(samples: Samples) -> float:
    return samples[("pcpu_tracking_start_time_seconds", frozenset())]


def problems(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "Traceback", "KeyError"))
    ]


# --- file systems vanishing ---------------------------------------------------------


def nsenter(pid: int, *command: str) -> None:
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", *command], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def scrape_until(daemon: Daemon, what: str, ok: Callable[[Samples], bool]) -> Samples:
    def check() -> Samples | None:
        s = parse(daemon.scrape())
        return s if ok(s) else None

    return wait_until(check, what=what)


PRIVATE_MOUNTS = ("unshare", "-m", "--propagation", "private")


@pytest.mark.privileged
@pytest.mark.needs_tool("unshare", "nsenter")
def test_debugfs_and_tracefs_unmounted_under_a_running_daemon(pin_dir: Path) -> None:
    """Nothing is lost: tracefs is read at start only, percpu_stats through the file
    opened then (which a daemon without capabilities could not open again)."""
    args = ("--backend", "bpf", "--pin-dir", str(pin_dir), "--min-read-interval", "0.2")
    daemon = Daemon(*args, prefix=PRIVATE_MOUNTS)
    try:
        daemon.wait_ready()
        before = parse(daemon.scrape())
        nsenter(daemon.proc.pid, "umount", "-l", "/sys/kernel/debug")
        nsenter(daemon.proc.pid, "umount", "-l", "/sys/kernel/tracing")
        fd = syscalls.create_percpu_array(1000, 37)
        syscalls.close(fd)
        after = scrape_until(
            daemon,
            "the map's allocations with debugfs and tracefs gone",
            lambda s: site_allocations(s) - site_allocations(before) >= 37,
        )
        assert set(collector_success(after).values()) == {1}, collector_success(after)
        assert after[("pcpu_stats_chunks", frozenset())] >= 1
        code, log = daemon.stop()
    finally:
        daemon.close()
    assert code == 0, log
    assert problems(log) == [], log
    assert Path("/sys/kernel/debug/percpu_stats").exists()  # the host kept its debugfs


@pytest.mark.privileged
@pytest.mark.needs_tool("unshare", "nsenter")
def test_a_daemon_started_without_debugfs_degrades_then_recovers(pin_dir: Path) -> None:
    args = ("--backend", "bpf", "--pin-dir", str(pin_dir), "--min-read-interval", "0.2")
    no_debugfs = (*PRIVATE_MOUNTS, "sh", "-c", 'umount -l /sys/kernel/debug && exec "$@"', "sh")
    daemon = Daemon(*args, prefix=no_debugfs)
    try:
        daemon.wait_ready()
        gone = scrape_until(daemon, "a scrape", lambda s: True)
        assert collector_success(gone) == {
            "snapshot": 1,
            "tracing": 1,
            "meminfo": 1,
            "percpu_stats": 0,
            "bpf_maps": 1,
            "cgroups": 1,
        }
        assert ("pcpu_stats_chunks", frozenset()) not in gone
        fd = syscalls.create_percpu_array(1000, 37)
        syscalls.close(fd)
        scrape_until(  # the BPF counters are served, and move
            daemon,
            "the map's allocations without debugfs",
            lambda s: site_allocations(s) - site_allocations(gone) >= 37,
        )
        nsenter(daemon.proc.pid, "mount", "-t", "debugfs", "nodev", "/sys/kernel/debug")
        back = scrape_until(
            daemon, "percpu_stats to recover", lambda s: collector_success(s)["percpu_stats"] == 1
        )
        assert set(collector_success(back).values()) == {1}
        code, log = daemon.stop()
    finally:
        daemon.close()
    assert code == 0, log
    failed = [line for line in log.splitlines() if "percpu_stats" in line and "WARNING" in line]
    assert len(failed) == 1, log  # the reason, once, however many scrapes failed
    assert "not found (debugfs not mounted" in failed[0]
    assert "collector percpu_stats recovered" in log
    assert problems(log) == failed


# --- SIGKILL at any point -----------------------------------------------------------


def children(pid: int, needle: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command line contains ``needle``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and needle in cmdline:
            out.append(int(entry.name))
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def whole_set_pinned(pin_dir: Path) -> bool:
    names = {p.name for p in pins.current(pin_dir).glob("*")}
    return {pins.link_pin(tp) for tp in PROGRAMS} <= names


def killed(daemon: Daemon) -> str:
    daemon.proc.kill()
    daemon.proc.wait(30)
    return daemon.close()


@pytest.mark.privileged
def test_killed_at_any_point_a_new_daemon_starts_cleanly_and_adopts(pin_dir: Path) -> None:
    args = ("--backend", "bpf", "--pin-dir", str(pin_dir))

    # 1. Killed while its loader compiles (before anything is attached): the loader dies
    #    with it, so nothing gets attached or pinned for nobody.
    first = Daemon(*args)
    try:
        loaders = wait_until(
            lambda: children(first.proc.pid, LOADER), what="the loader process to start"
        )
        killed(first)
    finally:
        first.close()
    wait_until(lambda: all(gone(pid) for pid in loaders), what="the loader to die with it")
    assert not pins.current(pin_dir).exists()  # it did not finish loading for nobody

    # 2. Killed right after the loader attached and pinned the set.
    second = Daemon(*args)
    try:
        wait_until(lambda: whole_set_pinned(pin_dir), what="the set to be attached and pinned")
        log = killed(second)
    finally:
        second.close()
    assert problems(log) == [], log
    state = pins.pinned_state(pin_dir)
    assert state is not None and state.meta is not None
    started = state.meta.started_ns / 1e9

    # 3. The next one adopts it; killed in the middle of scrapes.
    third = Daemon(*args)
    try:
        third.wait_ready()
        before = parse(third.scrape())
        socks = []
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", third.port), timeout=10)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(sock)
        log = killed(third)
        for sock in socks:
            sock.close()
    finally:
        third.close()
    assert "adopted the pinned set" in log, log
    assert start_time(before) == pytest.approx(started, abs=1e-6)

    # 4. And the next one again, counts continuing.
    fourth = Daemon(*args)
    try:
        fourth.wait_ready()
        after = parse(fourth.scrape())
        code, log = fourth.stop()
    finally:
        fourth.close()
    assert code == 0, log
    assert "adopted the pinned set" in log, log
    assert problems(log) == [], log
    assert start_time(after) == start_time(before)
    assert site_allocations(after) >= site_allocations(before)
    assert [p.name for p in pin_dir.iterdir()] == ["current"]  # no staging left behind


# --- stopping during scrapes ----------------------------------------------------------


class GatedBackend(Backend):
    """The simulator, whose snapshot waits for ``release``; records what happened when."""

    name = "gated"

    def __init__(self) -> None:
        self._sim = SimBackend("steady")
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[str] = []

    def snapshot(self) -> Snapshot:
        self.entered.set()
        self.release.wait(60)
        self.events.append("snapshot finished")
        return self._sim.snapshot()

    def close(self) -> None:
        self.events.append("closed")


def test_stop_waits_for_the_scrape_under_way_before_the_backend_closes() -> None:
    """The race SIGTERM once had with scrapes: the backend closed while a worker read
    it (KeyError 'on_alloc', "the bpf backend is closed" in the log)."""
    backend = GatedBackend()
    listener = bind(ListenAddress("127.0.0.1", 0))
    url = f"http://127.0.0.1:{bound_address(listener).port}/metrics"
    stop = threading.Event()

    def run() -> None:
        with backend:  # as `pcpu-bpf serve` does: close once serve returns
            serve(backend, listener, stop)

    server = threading.Thread(target=run)
    server.start()
    scraper = threading.Thread(target=lambda: _scrape_quietly(url))
    scraper.start()
    try:
        wait_until(backend.entered.is_set, what="a scrape to reach the backend")
        stop.set()
        server.join(1.0)  # serve must still be waiting for the scrape: a bound, not a claim
    finally:
        backend.release.set()
        server.join(30)
        scraper.join(30)
    assert not server.is_alive()
    assert backend.events == ["snapshot finished", "closed"]


def _scrape_quietly(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=30).read()
    except (urllib.error.URLError, ConnectionError, OSError):
        pass  # the connection is dropped when the server stops: expected


def hammer(url: str, stop: threading.Event, answered: threading.Semaphore) -> None:
    while not stop.is_set():
        try:
            urllib.request.urlopen(url, timeout=10).read()
            answered.release()
        except (urllib.error.URLError, ConnectionError, OSError):
            pass


@pytest.mark.privileged
def test_sigterm_during_a_scrape_storm_logs_nothing(pin_dir: Path) -> None:
    for _ in range(3):
        daemon = Daemon("--backend", "bpf", "--pin-dir", str(pin_dir), "--min-read-interval", "0")
        stop = threading.Event()
        answered = threading.Semaphore(0)
        threads = [
            threading.Thread(target=hammer, args=(daemon.url, stop, answered)) for _ in range(8)
        ]
        try:
            daemon.wait_ready()
            for t in threads:
                t.start()
            for _ in range(20):
                assert answered.acquire(timeout=30)
            code, log = daemon.stop()
        finally:
            stop.set()
            for t in threads:
                if t.is_alive():
                    t.join(30)
            daemon.close()
        assert code == 0, log
        assert problems(log) == [], log
        assert "is closed" not in log, log
