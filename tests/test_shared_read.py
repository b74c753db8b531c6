"""SharedRead: one read per interval, shared by concurrent callers, failures shared too."""

from __future__ import annotations

import threading

import pytest

from pcpu_bpf.kernel.shared_read import SharedRead


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reads_at_most_once_per_interval_from_the_end_of_the_last() -> None:
    clock, calls = Clock(), []

    def read() -> int:
        calls.append(clock.now)
        clock.now += 2.0  # a slow read
        return len(calls)

    shared = SharedRead(read, 5.0, clock=clock)
    assert shared() == 1
    clock.now += 4.9  # 4.9 s after the read ended
    assert shared() == 1
    assert shared.last_started() == 100.0  # what an age is counted from
    clock.now += 0.1
    assert shared() == 2
    assert calls == [100.0, 107.0]


def test_expire_makes_the_next_call_read_within_the_interval() -> None:
    clock, calls = Clock(), []

    def read() -> int:
        calls.append(clock.now)
        return len(calls)

    shared = SharedRead(read, 5.0, clock=clock)
    assert shared() == 1 and shared() == 1
    shared.expire()
    assert shared() == 2
    assert shared() == 2  # the interval runs again from that read
    assert len(calls) == 2


def test_concurrent_callers_share_the_read_under_way() -> None:
    entered, release, calls = threading.Event(), threading.Event(), []

    def read() -> str:
        calls.append(1)
        entered.set()
        release.wait(10)
        return "snapshot"

    shared = SharedRead(read, 0.0)  # no interval: sharing comes from overlap alone
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(shared()))
    first.start()
    assert entered.wait(10)
    assert shared.stuck_for() >= 0
    others = [threading.Thread(target=lambda: results.append(shared())) for _ in range(10)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert results == ["snapshot"] * 11
    assert len(calls) <= 2  # a caller may arrive after the read ended: one more read
    assert shared.stuck_for() == 0


def test_a_failure_is_shared_within_the_interval() -> None:
    clock, calls = Clock(), []

    def read() -> int:
        calls.append(1)
        raise OSError("debugfs went away")

    shared = SharedRead(read, 1.0, clock=clock)
    for _ in range(3):
        with pytest.raises(OSError, match="debugfs"):
            shared()
    assert len(calls) == 1
    clock.now += 1.0
    with pytest.raises(OSError):
        shared()
    assert len(calls) == 2


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        SharedRead(lambda: 1, -1.0)


def test_max_connections_fit_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import resource

    from pcpu_bpf.daemon import server
    from pcpu_bpf.daemon.http_server import Limits

    limit = {"soft": 300, "hard": 400}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limit["soft"], limit["hard"]))

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        limit["soft"] = value[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    monkeypatch.setattr(server.os, "listdir", lambda _: ["x"] * 40)
    # 40 open + 256 + 32 spare = 328: the soft limit is raised, nothing is lowered.
    assert server.fit_open_file_limit(Limits(max_connections=256)).max_connections == 256
    assert limit["soft"] == 328
    # 40 + 1000 + 32 is past the hard limit: raised to 400, 328 connections held.
    fitted = server.fit_open_file_limit(Limits(max_connections=1000))
    assert (limit["soft"], fitted.max_connections) == (400, 328)
    assert "does not fit the open-file limit 400" in caplog.text
