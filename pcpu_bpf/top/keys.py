"""Keys typed in pcpu-top --live: the terminal in cbreak mode, read without blocking the redraw.

`Keyboard` puts the terminal in cbreak mode (keys arrive one at a time, unechoed; Ctrl-C
still interrupts) for as long as it is entered, and puts back exactly what it found on
every way out: a normal end, `q`, Ctrl-C, an exception, and SIGTERM or SIGHUP, which
it turns into SystemExit while entered so the restoring code runs. `wait` waits for a
key at most until the next redraw is due.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Protocol


class KeySource(Protocol):
    """Where pcpu-top's loop waits between two frames."""

    def wait(self, timeout: float) -> str | None:
        """A key typed within ``timeout`` seconds, or None once they have passed."""
        ...


class NoKeys:
    """No terminal to read: waiting is sleeping."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._sleep = sleep

    def wait(self, timeout: float) -> str | None:
        self._sleep(timeout)
        return None


class Keyboard:
    """The controlling terminal on ``fd`` in cbreak mode, while entered."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._saved: list[Any] | None = None
        self._handlers: dict[int, Any] = {}

    def __enter__(self) -> Keyboard:
        self._saved = termios.tcgetattr(self.fd)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._handlers[signum] = signal.signal(signum, _exit_on_signal)
        tty.setcbreak(self.fd, termios.TCSANOW)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()

    def wait(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            data = os.read(self.fd, 32)
            if not data:  # the terminal went away: no keys any more, but time goes on
                time.sleep(max(0.0, deadline - time.monotonic()))
                return None
            return data.decode(errors="replace")[-1:]


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal keys can be read from (a test's stand-in is not)."""
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
