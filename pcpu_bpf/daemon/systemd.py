"""Life under systemd: readiness and watchdog notification, journald-friendly logs."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def sd_notify(state: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd's NOTIFY_SOCKET; False when not under it."""
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract socket namespace
    elif not path.startswith("/"):
        return False  # unset, or a vsock address this daemon has no use for
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), None when not asked for."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    return int(usec) / 2e6


def configure_logging(env: Mapping[str, str] = os.environ) -> None:
    """Journald-friendly stderr logs: syslog priority prefixes and no timestamps under it."""
    formatter: logging.Formatter
    if _stderr_is_journal(env):
        formatter = _JournalFormatter("%(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def _stderr_is_journal(env: Mapping[str, str]) -> bool:
    # systemd sets JOURNAL_STREAM=dev:ino; only trust it if stderr is still that stream.
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return env.get("JOURNAL_STREAM", "") == f"{st.st_dev}:{st.st_ino}"


class _JournalFormatter(logging.Formatter):
    """Prefix <N> syslog priorities, which journald turns into the entry's priority."""

    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        return f"<{prio}>{super().format(record)}"
