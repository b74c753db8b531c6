"""Least privilege, measured: once attached the daemon holds no capability (every thread,
every set, read from /proc/PID/task/TID/status) and every collector still works; the
search keeps a capability a probe does need; and what a scraper sends never reaches the
file system, the kernel or the daemon's options.

(Under the unit's own privileges, a non-root user with four ambient capabilities:
tests/test_systemd_unit.py checks the same after READY=1.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from daemon_helpers import Daemon, collector_success, parse
from test_daemon_guard import CountingReader, SimReadingKernelStats, request, status
from waiting import wait_until

from pcpu_bpf.bpf import syscalls
from pcpu_bpf.daemon.listener import ListenAddress, bind, bound_address
from pcpu_bpf.daemon.privileges import status_sets
from pcpu_bpf.daemon.server import serve
from pcpu_bpf.kernel.shared_read import SharedRead

FIXTURES = Path(__file__).parent / "fixtures"
SITE = "bpf_map_alloc_percpu"


def held(pid: int) -> dict[str, dict[str, int]]:
    """The non-zero capability sets of each thread."""
    return {tid: {k: v for k, v in sets.items() if v} for tid, sets in status_sets(pid).items()}


@pytest.mark.privileged
def test_a_root_daemon_keeps_only_what_listing_bpf_maps_needs_and_every_collector_works() -> None:
    daemon = Daemon("--backend", "bpf")
    try:
        daemon.wait_ready()
        threads = held(daemon.proc.pid)
        before = parse(daemon.scrape())
        fd = syscalls.create_percpu_array(1000, 37)
        syscalls.close(fd)

        def counted() -> dict | None:
            s = parse(daemon.scrape())
            grown = sum(
                v - before.get(k, 0.0)
                for k, v in s.items()
                if k[0] == "pcpu_allocations_total" and ("call_site", SITE) in k[1]
            )
            return s if grown >= 37 else None

        after = wait_until(counted, what="the map's 37 allocations, read without capabilities")
        code, log = daemon.stop()
    finally:
        daemon.close()
    assert code == 0, log
    assert len(threads) >= 3  # the main thread, the HTTP loop, the scrape workers
    # Only CAP_SYS_ADMIN: listing every BPF map on the host (bpf_maps) needs it, and
    # nothing else the daemon still does needs any; the bounding set included.
    sys_admin = 1 << 21
    kept = {"CapPrm": sys_admin, "CapEff": sys_admin, "CapBnd": sys_admin}
    assert all(sets == kept for sets in threads.values()), threads
    assert "running with capabilities CAP_SYS_ADMIN; dropped" in log, log
    success = collector_success(after)
    assert success == {
        "snapshot": 1,
        "tracing": 1,
        "percpu_stats": 1,
        "meminfo": 1,
        "bpf_maps": 1,
        "cgroups": 1,
    }
    assert ("pcpu_stats_chunks", frozenset()) in after
    # The programs' own statistics come through BPF_OBJ_GET_INFO_BY_FD, without CAP_BPF.
    assert any(name == "pcpu_bpf_program_recursion_misses_total" for name, _ in after)


KEEPS_BPF = """
import os
from pcpu_bpf.bpf import syscalls
from pcpu_bpf.daemon.privileges import drop_capabilities, names, bits, status_sets

def probe():  # something that does need CAP_BPF: creating a map
    try:
        syscalls.close(syscalls.create_percpu_array(8, 1))
    except OSError:
        return False
    return True

kept = drop_capabilities(probe)
sets = status_sets()[str(os.getpid())]
print(names(bits(kept)), hex(sets["CapEff"]), hex(sets["CapPrm"]), hex(sets["CapBnd"]))
"""


@pytest.mark.privileged
def test_the_search_keeps_what_the_probe_needs() -> None:
    run = subprocess.run(
        [sys.executable, "-c", KEEPS_BPF], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    cap_bpf = hex(1 << 39)
    assert run.stdout.split() == ["CAP_BPF", cap_bpf, cap_bpf, cap_bpf], run.stdout


# --- what a scraper can make the daemon do ---------------------------------------------

ODD_REQUESTS = [
    (b"GET /../../../../etc/passwd HTTP/1.1", 404),
    (b"GET /metrics/../../etc/shadow HTTP/1.1", 404),
    (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1", 404),
    (b"GET //etc/passwd HTTP/1.1", 404),
    (b"GET /sys/kernel/debug/percpu_stats HTTP/1.1", 404),
    (b"GET /proc/self/environ HTTP/1.1", 404),
    (b"GET /metrics%00.txt HTTP/1.1", 404),
    (b"GET /metrics;/etc/passwd HTTP/1.1", 404),
    (b"GET //[ HTTP/1.1", 400),
    (b"GET http://127.0.0.1/metrics HTTP/1.1", 200),
    (b"GET /metrics?name[]=../../etc/passwd HTTP/1.1", 200),
    (b"GET /metrics?name[]=" + b"x" * 4000 + b" HTTP/1.1", 200),
    (b"GET /metrics?min_read_interval=0&backend=bpf&pin_dir=/tmp HTTP/1.1", 200),
    (b"GET /metrics?debugfs_root=/etc&listen=0.0.0.0:1 HTTP/1.1", 200),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\ndata", 405),
    (b"PUT /metrics HTTP/1.1", 405),
    (b"DELETE / HTTP/1.1", 405),
    (b"OPTIONS * HTTP/1.1", 400),
    (b"TRACE / HTTP/1.1", 405),
    (b"CONNECT 127.0.0.1:22 HTTP/1.1", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: ../../etc\r\nAccept: ../../etc/passwd", 200),
]


def test_no_path_query_or_header_reaches_the_file_system_or_the_kernel(tmp_path: Path) -> None:
    """Every file the server's threads open while odd requests arrive, recorded by an audit
    hook: only /proc/self (the process collector) and the kernel statistics it was told
    to read; kernel reads stay at one per interval, snapshots at one per /metrics."""
    shutil.copy(FIXTURES / "percpu_stats" / "live-6.18.txt", tmp_path / "percpu_stats")
    reader = CountingReader(tmp_path)
    backend = SimReadingKernelStats(SharedRead(reader, 60.0))
    opened: list[str] = []
    recording = threading.Event()

    def audit(event: str, args: tuple) -> None:
        if not recording.is_set() or threading.current_thread() is threading.main_thread():
            return
        if event == "open":
            opened.append(str(args[0]))
        elif event in ("os.listdir", "os.scandir"):
            opened.append(str(args[0]))
        elif event.startswith(("subprocess.", "os.exec", "os.posix_spawn", "os.system")):
            opened.append(f"{event} {args!r}")

    sys.addaudithook(audit)  # cannot be removed: it records only while `recording` is set
    listener = bind(ListenAddress("127.0.0.1", 0))
    port = bound_address(listener).port
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(backend, listener, stop), kwargs={"min_read_interval": 60.0}
    )
    thread.start()
    try:
        wait_until(lambda: status(request(port, b"GET / HTTP/1.1\r\n\r\n")) == 200, what="ready")
        reads_before = reader.calls
        recording.set()
        answers = []
        for raw, _ in ODD_REQUESTS:
            head, _, body = raw.partition(b"\r\n\r\n")
            answers.append(request(port, head + b"\r\n\r\n" + body))
        recording.clear()
    finally:
        stop.set()
        thread.join(10)
    got = [status(a) for a in answers]
    assert got == [want for _, want in ODD_REQUESTS], list(zip(ODD_REQUESTS, got, strict=True))
    for answer in answers:
        assert b"root:" not in answer and b"PATH=" not in answer
    # A name[] filter narrows, never widens: the odd name matches no family.
    assert b"pcpu_" not in answers[10].split(b"\r\n\r\n", 1)[1]
    assert reader.calls - reads_before <= 1  # the query asked for no kernel read
    assert backend.snapshots <= sum(want == 200 for _, want in ODD_REQUESTS)
    outside = [
        path
        for path in opened
        if not path.startswith(("/proc/self/", "/proc/stat", str(tmp_path)))
        and path not in ("/proc/self", str(FIXTURES / "proc" / "live-6.18" / "meminfo"))
    ]
    assert outside == [], outside
    assert any(path.startswith("/proc/self/") for path in opened)  # the hook did record
