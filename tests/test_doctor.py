"""`pcpu-bpf doctor` on fake system trees (no root needed) and once on the real kernel."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pcpu_bpf import doctor
from pcpu_bpf.cli import main
from pcpu_bpf.errors import BackendUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"
RELEASE = "6.18.0-test"
ALL_CAPS = (1 << 41) - 1
BPF_PERFMON = (1 << doctor.CAP_BPF) | (1 << doctor.CAP_PERFMON)


def fake_bcc() -> types.ModuleType:
    m = types.ModuleType("bcc")
    m.__file__ = "/usr/lib/python3/dist-packages/bcc/__init__.py"
    m.__version__ = "0.26.0"  # type: ignore[attr-defined]
    return m


def no_bcc() -> types.ModuleType:
    raise ImportError("No module named 'bcc'")


def make_system(
    tmp: Path,
    *,
    caps: int = ALL_CAPS,
    kernel: str | None = "6.18",
    headers: bool = True,
    kallsyms_zero: bool = False,
    bpf_stats: str = "1",
    percpu_stats: bool = True,
    unified: bool = True,
) -> doctor.Paths:
    proc = tmp / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/status").write_text(f"Name:\tpython3\nCapInh:\t0\nCapEff:\t{caps:016x}\n")
    cgroup2 = tmp / "cgroup"
    if unified:
        cgroup2.mkdir()
        (cgroup2 / "cgroup.subtree_control").write_text("cpu memory pids\n")
        mount = f"29 22 0:26 / {cgroup2} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    else:
        mount = "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n"
    (proc / "self/mountinfo").write_text(mount)
    addr = "0000000000000000" if kallsyms_zero else "ffffffff81000000"
    (proc / "kallsyms").write_text(f"{addr} T _stext\n{addr} T do_one_initcall\n")
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/bpf_stats_enabled").write_text(bpf_stats + "\n")
    modules = tmp / "modules"
    if headers:
        (tmp / "linux-headers/include").mkdir(parents=True)
        (modules / RELEASE).mkdir(parents=True)
        (modules / RELEASE / "build").symlink_to(tmp / "linux-headers")
    debug = tmp / "debug"
    debug.mkdir()
    (debug / "bdi").mkdir()
    if percpu_stats:
        (debug / "percpu_stats").write_text("Percpu Memory Statistics\n")
    tracefs = FIXTURES / kernel if kernel else tmp / "no-tracefs"
    return doctor.Paths(
        proc_root=proc, modules_root=modules, debugfs_root=debug, tracefs_candidates=(tracefs,)
    )


def verdicts(paths: doctor.Paths, **kw: object) -> dict[str, doctor.Check]:
    kw.setdefault("import_bcc", fake_bcc)
    return {c.name: c for c in doctor.run_checks(paths, release=RELEASE, **kw)}


def test_healthy_system_is_all_ok(tmp_path: Path) -> None:
    checks = verdicts(make_system(tmp_path))
    assert {n: c.verdict for n, c in checks.items()} == dict.fromkeys(checks, "ok")
    assert "linux-headers" in checks["kernel headers"].detail
    assert "0.26.0 from /usr/lib/python3/dist-packages/bcc" in checks["bcc"].detail
    assert "memory controller on" in checks["cgroups"].detail
    assert doctor.can_run(list(checks.values()))


@pytest.mark.parametrize(
    ("system", "check", "verdict", "says"),
    [
        ({"caps": 0}, "privileges", "FAIL", "CAP_BPF"),
        ({"caps": BPF_PERFMON}, "privileges", "warn", "CAP_SYSLOG"),
        ({"caps": 1 << doctor.CAP_SYS_ADMIN | 1 << doctor.CAP_SYSLOG}, "privileges", "ok", ""),
        ({"kernel": None}, "tracefs", "FAIL", "mount -t tracefs nodev /sys/kernel/tracing"),
        ({"kernel": None}, "tracepoints", "FAIL", "mount -t tracefs"),
        ({"kernel": "5.15"}, "tracepoints", "warn", "percpu_alloc_percpu.bytes_alloc"),
        ({"headers": False}, "kernel headers", "FAIL", "setup.sh"),
        ({"kallsyms_zero": True}, "kallsyms", "warn", "CAP_SYSLOG"),
        ({"bpf_stats": "0"}, "bpf_stats", "warn", "sysctl -w kernel.bpf_stats_enabled=1"),
        ({"percpu_stats": False}, "percpu_stats", "warn", "CONFIG_PERCPU_STATS"),
        ({"caps": BPF_PERFMON}, "BPF map owners", "warn", "CAP_SYS_ADMIN"),
        ({"unified": False}, "cgroups", "warn", "mount -t cgroup2"),
    ],
)
def test_each_problem_has_a_verdict_and_a_fix(
    tmp_path: Path, system: dict, check: str, verdict: str, says: str
) -> None:
    c = verdicts(make_system(tmp_path, **system))[check]
    assert c.verdict == verdict
    assert says in c.line()
    assert "\n" not in c.line()


def test_no_bcc_fails_naming_the_package(tmp_path: Path) -> None:
    c = verdicts(make_system(tmp_path), import_bcc=no_bcc)["bcc"]
    assert c.verdict == "FAIL"
    assert "python3-bpfcc" in c.fix and "--system-site-packages" in c.fix


def test_load_runs_only_when_nothing_failed(tmp_path: Path) -> None:
    started: list[int] = []

    def start() -> object:
        started.append(1)
        raise BackendUnavailable("boom: fix it")

    checks = verdicts(make_system(tmp_path, headers=False), start_backend=start)
    assert "load" not in checks and not started
    checks = verdicts(make_system(tmp_path / "2"), start_backend=start)
    assert checks["load"].verdict == "FAIL" and "boom" in checks["load"].detail


def test_cli_exits_nonzero_with_one_line_per_check(runner, tmp_path: Path) -> None:
    paths = make_system(tmp_path, headers=False)
    result = runner.invoke(
        main,
        [
            "doctor",
            "--no-load",
            "--release",
            RELEASE,
            "--proc-root",
            str(paths.proc_root),
            "--modules-root",
            str(paths.modules_root),
            "--debugfs-root",
            str(paths.debugfs_root),
            "--tracefs-root",
            str(paths.tracefs_candidates[0]),
        ],
    )
    assert result.exit_code == 1
    assert "FAIL  kernel headers" in result.output and "setup.sh" in result.output
    assert "cannot run here" in result.output
    assert "Traceback" not in result.output


@pytest.mark.privileged
def test_real_system_passes(runner) -> None:
    result = runner.invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "ok    load:" in result.output
    assert "the bpf backend can run here" in result.output


@pytest.mark.privileged
def test_unprivileged_user_gets_verdicts_not_a_traceback() -> None:
    # The user doctor exists for: not root, no capabilities, tracefs and debugfs
    # root-only. Every check must still give its verdict and the fix. The checks run in
    # a forked child that drops to nobody, so the checkout's location does not matter.
    import os

    from click.testing import CliRunner

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, run the command, report through the pipe
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = CliRunner().invoke(main, ["doctor"])
            text = f"{result.exit_code}\n{result.output}"
        except BaseException as exc:  # anything must reach the parent
            text = f"99\n{exc!r}"
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        code, output = f.read().split("\n", 1)
    os.waitpid(pid, 0)
    assert code == "1", output
    assert "Traceback" not in output
    lines = {line.split()[1].rstrip(":"): line for line in output.splitlines()[:-1]}
    assert lines["privileges"].startswith("FAIL")
    assert "CAP_DAC_READ_SEARCH" in lines["privileges"]
    assert lines["tracefs"].startswith("FAIL")
    assert "mount" not in lines["tracefs"]  # mounted but unreadable: the fix is privileges
    assert lines["percpu_stats"].startswith("warn")
    assert output.splitlines()[-1] == "Error: the bpf backend cannot run here (3 check(s) failed)"


def test_empty_kallsyms_is_reported_as_hidden(tmp_path: Path) -> None:
    paths = make_system(tmp_path)
    (paths.proc_root / "kallsyms").write_text("")
    check = doctor.check_kallsyms(paths)
    assert check.verdict == doctor.WARN
    assert "empty" in check.detail and "ProtectKernelTunables" in check.detail
