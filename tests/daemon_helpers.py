"""Run `pcpu-bpf serve` as a subprocess for tests, and read what it serves."""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

PCPU_BPF = str(Path(sys.executable).with_name("pcpu-bpf"))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (from /proc/PID/fdinfo)."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def collector_success(samples: Samples) -> dict[str, float]:
    """pcpu_collector_success by collector."""
    return {
        dict(labels)["collector"]: v
        for (name, labels), v in samples.items()
        if name == "pcpu_collector_success"
    }


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PCPU_BPF, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


class Daemon:
    """A `pcpu-bpf serve` subprocess on a free loopback port."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        stderr: int | None = subprocess.PIPE,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        command: list[str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``tls`` (the client's context) and ``credentials`` are what scrape() uses;
        ``command`` replaces `pcpu-bpf serve --listen HOST:PORT` (HOST:PORT is appended
        to it instead); ``prefix`` is a command that execs the daemon (``unshare -m``):
        its pid stays."""
        self.port = free_port(host)
        self.hostport = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.url = f"{'http' if tls is None else 'https'}://{self.hostport}/metrics"
        self.tls = tls
        self.headers: dict[str, str] = {}
        if credentials is not None:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        argv = (
            [*command, self.hostport] if command else [PCPU_BPF, "serve", "--listen", self.hostport]
        )
        self.proc = subprocess.Popen(
            [*prefix, *argv, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self._closed = False

    def wait_ready(self, timeout: float = 60.0) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                err = self.close()
                raise AssertionError(f"daemon exited {self.proc.returncode}: {err}")
            try:
                self.scrape()
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        wait_until(answers, timeout=timeout, what=f"pcpu-bpf serve to answer on {self.url}")

    def scrape(self) -> str:
        request = urllib.request.Request(self.url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=10, context=self.tls) as response:
            body: bytes = response.read()
        return body.decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, str]:
        """Send ``sig``; (exit code, stderr) once it exits, a failure if not within ``timeout``."""
        self.proc.send_signal(sig)
        try:
            wait_until(
                lambda: self.proc.poll() is not None,
                timeout=timeout,
                what=f"pcpu-bpf serve to exit on {signal.Signals(sig).name}",
            )
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode, self.close()

    def close(self) -> str:
        """Kill if still running, reap, close the pipes; stderr (once)."""
        if self.proc.poll() is None:
            self.proc.kill()
        if self._closed:
            return ""
        self._closed = True
        _, err = self.proc.communicate()
        return err or ""
