"""Bad kernel files, table-driven: percpu_stats, meminfo, the tracefs format files,
kallsyms, /proc/self/status, the bpf_stats sysctl and the possible-CPU list, each empty,
undecodable, truncated, thinned, holding a 5,000-digit number, or a directory.

Each goes through its reader (which raises its own one-line error, or OSError where the
caller decides) and the layer above it (the kernel statistics reader degrades per part;
`pcpu-bpf doctor` gives one verdict line per check); a test counts tracebacks across the
whole table and expects none.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_doctor import RELEASE, fake_bcc, make_system

from pcpu_bpf import doctor
from pcpu_bpf.bpf.syscalls import bpf_stats_enabled
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.cli import main
from pcpu_bpf.errors import BackendUnavailable, StatsParseError
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.kernel.procfs import read_meminfo_percpu, read_possible_cpus
from pcpu_bpf.kernel.reader import KernelStatsReader
from pcpu_bpf.model.symbolizer import Symbolizer

FIXTURES = Path(__file__).parent / "fixtures"
FORMAT = "tracefs/events/percpu/percpu_alloc_percpu/format"
# Where each file lives in the tree `system` builds.
FILES = {
    "percpu_stats": "debug/percpu_stats",
    "meminfo": "proc/meminfo",
    "format": FORMAT,
    "kallsyms": "proc/kallsyms",
    "status": "proc/self/status",
    "bpf_stats_enabled": "proc/sys/kernel/bpf_stats_enabled",
    "possible": "sys/devices/system/cpu/possible",
}
DIRECTORY = "a directory"


def thinned(good: bytes) -> bytes:
    return b"\n".join(good.split(b"\n")[::2])


BAD: dict[str, Callable[[bytes], bytes | str]] = {
    "empty": lambda good: b"",
    "undecodable": lambda good: b"\x80\xfe\x00\xff" + good[:40] + b"\xc3\x28",
    "truncated": lambda good: good[: len(good) // 3],
    "thinned": thinned,
    "huge-number": lambda good: b"9" * 5000 + b"\n" + good,
    "directory": lambda good: DIRECTORY,
}


def system(tmp: Path) -> doctor.Paths:
    """A healthy fake system: doctor's tree, real fixture texts, a tracefs copy."""
    paths = make_system(tmp)
    shutil.copy(FIXTURES / "percpu_stats" / "live-6.18.txt", tmp / FILES["percpu_stats"])
    shutil.copy(FIXTURES / "proc" / "live-6.18" / "meminfo", tmp / FILES["meminfo"])
    shutil.copy(FIXTURES / "proc" / "live-6.18" / "kallsyms", tmp / FILES["kallsyms"])
    shutil.copytree(FIXTURES / "tracefs" / "6.18", tmp / "tracefs")
    possible = tmp / FILES["possible"]
    possible.parent.mkdir(parents=True)
    possible.write_text("0-1\n")
    return doctor.Paths(
        proc_root=paths.proc_root,
        modules_root=paths.modules_root,
        debugfs_root=paths.debugfs_root,
        tracefs_candidates=(tmp / "tracefs",),
    )


def damage(tmp: Path, name: str, bad: str) -> Path:
    path = tmp / FILES[name]
    content = BAD[bad](path.read_bytes())
    path.unlink()
    if content == DIRECTORY:
        path.mkdir()
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    return path


def one_line(exc: BaseException) -> None:
    assert str(exc) and "\n" not in str(exc), repr(exc)


def through_reader(tmp: Path, paths: doctor.Paths, name: str) -> None:
    """The reader of ``name``: a value, its own error, or OSError (the caller decides)."""
    readers: dict[str, Callable[[], object]] = {
        "percpu_stats": lambda: read_percpu_stats(paths.debugfs_root),
        "meminfo": lambda: read_meminfo_percpu(paths.proc_root),
        "format": lambda: read_layout(tmp / "tracefs").check_required(),
        "kallsyms": lambda: Symbolizer.from_file(tmp / FILES["kallsyms"]).resolve(0xFFFF),
        "status": lambda: doctor.parse_cap_eff((tmp / FILES["status"]).read_text("latin-1")),
        "bpf_stats_enabled": lambda: bpf_stats_enabled(tmp / FILES["bpf_stats_enabled"]),
        "possible": lambda: read_possible_cpus(tmp / "sys"),
    }
    try:
        readers[name]()
    except (StatsParseError, BackendUnavailable) as exc:
        one_line(exc)
    except OSError:
        pass  # documented: propagates to a caller that degrades or explains


def through_the_layer_above(tmp: Path, paths: doctor.Paths, name: str) -> None:
    if name in ("percpu_stats", "meminfo"):
        stats = KernelStatsReader(paths.debugfs_root, paths.proc_root, warn=False)()
        for part, reason in stats.errors.items():
            assert part == name and reason and "\n" not in reason
    for check in doctor.run_checks(paths, release=RELEASE, import_bcc=fake_bcc):
        assert "\n" not in check.line()


CASES = [(name, bad) for name in FILES for bad in BAD]


@pytest.mark.parametrize(("name", "bad"), CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_bad_file_is_one_line_never_a_traceback(tmp_path: Path, name: str, bad: str) -> None:
    paths = system(tmp_path)
    damage(tmp_path, name, bad)
    through_reader(tmp_path, paths, name)
    through_the_layer_above(tmp_path, paths, name)


def doctor_cli(tmp: Path, paths: doctor.Paths) -> object:
    return CliRunner().invoke(
        main,
        [
            "doctor",
            "--no-load",
            "--proc-root",
            str(paths.proc_root),
            "--debugfs-root",
            str(paths.debugfs_root),
            "--tracefs-root",
            str(tmp / "tracefs"),
            "--modules-root",
            str(paths.modules_root),
            "--release",
            RELEASE,
            "--pin-dir",
            str(tmp / "no-pins"),
        ],
    )


def test_no_traceback_from_doctor_across_the_whole_table(tmp_path: Path) -> None:
    tracebacks = []
    for i, (name, bad) in enumerate(CASES):
        root = tmp_path / str(i)
        root.mkdir()
        paths = system(root)
        damage(root, name, bad)
        result = doctor_cli(root, paths)
        if not isinstance(result.exception, (SystemExit, type(None))):
            tracebacks.append(f"{name}-{bad}: {result.exception!r}")
    assert tracebacks == []
