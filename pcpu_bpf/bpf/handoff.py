"""A loaded set of maps, programs and links, held by fds: from the loader process, or pins.

`spawn_loader` runs ``python -m pcpu_bpf.bpf.loader`` with one end of a socketpair and
receives the fds it sends (SCM_RIGHTS) with their manifest; the process then exits (and
dies with its caller if that dies first: PR_SET_PDEATHSIG), so
bcc and LLVM never stay mapped in the caller. Links die with their last fd: a set that
is not pinned detaches when its holder closes it or exits.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcpu_bpf.bpf.loader import LoadRequest
from pcpu_bpf.bpf.pins import LoadedSet
from pcpu_bpf.errors import BackendUnavailable, ProgramLoadError

# The manifest and at most a few dozen fds; generous.
_MAX_MESSAGE = 1 << 20
_MAX_FDS = 64
# The directory holding this pcpu_bpf (and exporters, bpf_programs beside it).
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def loader_environment() -> dict[str, str]:
    """The loader's environment: this pcpu_bpf first on its module path, so an install in a
    private directory (the Debian package's /usr/share/pcpu-bpf) loads the same code."""
    inherited = os.environ.get("PYTHONPATH")
    path = str(_PACKAGE_ROOT) if not inherited else os.pathsep.join([str(_PACKAGE_ROOT), inherited])
    return {**os.environ, "PYTHONPATH": path}


def from_manifest(manifest: Mapping[str, Any], fds: list[int]) -> LoadedSet:
    """The set a loader's manifest describes, its indices resolved to ``fds``."""
    return LoadedSet(
        maps={k: fds[i] for k, i in manifest["maps"].items()},
        programs={k: fds[i] for k, i in manifest["programs"].items()},
        links={k: fds[i] for k, i in manifest["links"].items()},
        layout=bytes.fromhex(manifest["layout"]),
        started_ns=int(manifest["started_ns"]),
        percpu_bytes_per_cpu=int(manifest["percpu_bytes_per_cpu"]),
        pin_dir=manifest.get("pinned"),
    )


def spawn_loader(request: LoadRequest, timeout: float = 600.0) -> LoadedSet:
    """Run the loader process on ``request`` and take over what it loaded."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # bcc's compiler warnings go to a file: a full pipe would stall the loader.
    with parent, tempfile.TemporaryFile("w+") as stderr:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pcpu_bpf.bpf.loader",
                    str(child.fileno()),
                    str(os.getpid()),
                ],
                stdin=subprocess.PIPE,
                stderr=stderr,
                pass_fds=(child.fileno(),),
                env=loader_environment(),
                text=True,
            )
        finally:
            child.close()
        assert proc.stdin is not None
        try:
            proc.stdin.write(request.to_json())
            proc.stdin.close()
            message, fds = _receive(parent, timeout)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.wait()
            stderr.seek(0)
            err = stderr.read()
    if message is None:
        tail = _tail(err) or f"exit status {proc.returncode}"
        raise ProgramLoadError(f"the BPF loader process failed: {tail}")
    if "error" in message:
        for fd in fds:
            os.close(fd)
        if message["error"] == "unavailable":
            raise BackendUnavailable(message["message"])
        # What bcc printed last says why: the compiler's error, or the verifier's verdict
        # (e.g. "R0 unbounded memory access" from an older kernel's verifier).
        tail = _tail(err)
        raise ProgramLoadError(message["message"] + (f" (loader: {tail})" if tail else ""))
    return from_manifest(message, fds)


def _tail(stderr: str, lines: int = 3) -> str:
    """The last non-empty lines of the loader's stderr, on one line."""
    return " | ".join([line.strip() for line in stderr.splitlines() if line.strip()][-lines:])


def _receive(sock: socket.socket, timeout: float) -> tuple[dict[str, Any] | None, list[int]]:
    """The loader's one message and fds; None when it exited without sending."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        raise ProgramLoadError(f"the BPF loader process sent nothing in {timeout:g} s")
    data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, _MAX_FDS)
    if not data:
        return None, list(fds)
    return json.loads(data.decode()), list(fds)
