"""Bad input, table-driven: every command with garbage in options and environment variables
gets one `Error:` line and a non-zero exit, never a traceback. (An empty variable means
unset, as click and systemd's EnvironmentFile= read it.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pcpu_bpf.cli import main as pcpu_bpf
from pcpu_bpf.cli.top import main as pcpu_top

BAD_OPTIONS: list[tuple[str, list[str], dict[str, str]]] = [
    # pcpu-top
    ("top", ["nan", "1"], {}),
    ("top", ["inf", "1"], {}),
    ("top", ["1e300", "1"], {}),
    ("top", ["0"], {}),
    ("top", ["-0.5"], {}),
    ("top", ["x"], {}),
    ("top", ["1", "0"], {}),
    ("top", ["1", "nan"], {}),
    ("top", ["1", "2", "3"], {}),
    ("top", ["--limit", "-1"], {}),
    ("top", ["--limit", ""], {}),
    ("top", ["--sort", "size"], {}),
    ("top", ["--backend", "kernel"], {}),
    ("top", ["--scenario", "nope"], {}),
    ("top", ["--scenario", "leak", "--backend", "bpf"], {}),
    ("top", ["--live", "--json"], {}),
    ("top", ["--from", "127.0.0.1:9717", "--backend", "sim"], {}),
    ("top", ["--from", ""], {}),
    ("top", ["--from", "ftp://host/metrics"], {}),
    ("top", ["--from", "http://[::1"], {}),
    ("top", ["--from", "127.0.0.1:port"], {}),
    # pcpu-bpf serve
    ("serve", ["--backend", "kernel"], {}),
    ("serve", ["--backend", "sim", "--listen", "nowhere"], {}),
    ("serve", ["--backend", "sim", "--listen", ":99999"], {}),
    ("serve", ["--backend", "sim", "--listen", "[::1"], {}),
    ("serve", ["--backend", "sim", "--listen", "::1:9717"], {}),
    ("serve", ["--backend", "sim", "--seed", "x"], {}),
    ("serve", ["--backend", "sim", "--scenario", "nope"], {}),
    ("serve", ["--backend", "sim", "--live-capacity", "0"], {}),
    ("serve", ["--backend", "sim", "--live-capacity", str(2**32)], {}),
    ("serve", ["--backend", "sim", "--site-capacity", "-1"], {}),
    ("serve", ["--backend", "sim", "--min-read-interval", "nan"], {}),
    ("serve", ["--backend", "sim", "--min-read-interval", "-1"], {}),
    ("serve", ["--backend", "sim", "--min-read-interval", "inf"], {}),
    ("serve", ["--backend", "sim", "--max-connections", "0"], {}),
    ("serve", ["--backend", "sim", "--max-connections", "x"], {}),
    ("serve", [], {"PCPU_SERVE_BACKEND": "kernel"}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_LISTEN": "nowhere"}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_MAX_CONNECTIONS": "abc"}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_MIN_READ_INTERVAL": "nan"}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_SEED": "1.5"}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_LIVE_CAPACITY": "lots"}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_SCENARIO": "nope"}),
    # pcpu-bpf simulate
    ("simulate", ["--ops", "-1"], {}),
    ("simulate", ["--ops", "x"], {}),
    ("simulate", ["--seed", "1.5"], {}),
    ("simulate", ["--geometry", "huge"], {}),
    ("simulate", ["--balance", "sometimes"], {}),
    ("simulate", ["--balance", "every:0"], {}),
    ("simulate", ["--alloc", "x"], {}),
    ("simulate", ["--alloc", "8/x"], {}),
    ("simulate", ["--json", "--stats"], {}),
    ("simulate", ["-s", "nope"], {}),
    ("serve", ["--backend", "sim", "--pin-dir", "/etc/passwd"], {}),
    ("serve", ["--backend", "sim"], {"PCPU_SERVE_PIN_DIR": "/etc/passwd"}),
    # pcpu-bpf detach: only a pin directory inside a bpffs is ever emptied
    ("detach", ["--pin-dir", "/tmp"], {}),
    ("detach", ["--pin-dir", "/sys/fs/bpf"], {}),
    ("detach", ["--pin-dir", "/etc/passwd"], {}),
    ("detach", [], {"PCPU_SERVE_PIN_DIR": "/etc"}),
    ("detach", ["extra"], {}),
    ("detach", ["--pin-dir"], {}),
    # pcpu-bpf doctor
    ("doctor", ["--pin-dir", "/etc/passwd"], {}),
    ("doctor", ["--live-capacity", "x"], {}),
    ("doctor", ["--site-capacity", ""], {}),
    ("doctor", [], {"PCPU_SERVE_LIVE_CAPACITY": "lots"}),
    ("doctor", ["--nonsense"], {}),
    # the group
    ("group", ["nosuchcommand"], {}),
    ("group", ["-v", "serve", "--backend", "sim"], {"PCPU_SERVE_LISTEN": ":"}),
]


def invoke(where: str, args: list[str], env: dict[str, str]) -> Result:
    runner = CliRunner()
    if where == "top":
        return runner.invoke(pcpu_top, args, env=env)
    prefix = [] if where == "group" else [where]
    # --check: a case that wrongly passes attaches, reports and exits, instead of serving.
    return runner.invoke(pcpu_bpf, prefix + args, env={"PCPU_SERVE_CHECK": "1", **env})


@pytest.mark.parametrize(
    ("where", "args", "env"),
    BAD_OPTIONS,
    ids=[" ".join([w, *a, *(f"{k}={v}" for k, v in e.items())]) for w, a, e in BAD_OPTIONS],
)
def test_one_error_line_and_non_zero_exit(where: str, args: list[str], env: dict[str, str]) -> None:
    result = invoke(where, args, env)
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code in (1, 2), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output


def test_detach_never_empties_a_directory_outside_bpffs(tmp_path: Path) -> None:
    (tmp_path / "old_photos").mkdir()
    (tmp_path / "old_photos" / "keep.jpg").write_bytes(b"x")
    (tmp_path / "current").mkdir()
    result = CliRunner().invoke(pcpu_bpf, ["detach", "--pin-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not on a bpf file system" in result.stderr
    assert (tmp_path / "old_photos" / "keep.jpg").exists() and (tmp_path / "current").exists()


def test_no_traceback_in_the_whole_table() -> None:
    tracebacks = sum(not isinstance(invoke(*case).exception, SystemExit) for case in BAD_OPTIONS)
    assert tracebacks == 0


@pytest.mark.privileged
def test_serve_refuses_a_pin_dir_outside_bpffs(tmp_path: Path) -> None:
    from daemon_helpers import error_lines, run

    (tmp_path / "old_1").mkdir()
    (tmp_path / "old_1" / "keep").write_bytes(b"x")
    done = run("serve", "--backend", "bpf", "--pin-dir", str(tmp_path), "--listen", "127.0.0.1:0")
    assert done.returncode == 1, done.stderr
    [error] = error_lines(done.stderr)
    assert f"pin directory {tmp_path} is not on a bpf file system" in error
    assert (tmp_path / "old_1" / "keep").exists()
