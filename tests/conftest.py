"""Shared fixtures, the --update-golden switch, where marked tests can run, and CI's rule
that nothing skips."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

TRACEFS = Path("/sys/kernel/tracing")
BPFFS = Path("/sys/fs/bpf")
# Daemons the tests start pin their sets here, never in the real /sys/fs/bpf/pcpu-bpf:
# every `pcpu-bpf` process of the session inherits it (PCPU_SERVE_PIN_DIR).
TEST_PIN_DIR = BPFFS / f"pcpu-bpf-test-{os.getpid()}"
os.environ["PCPU_SERVE_PIN_DIR"] = str(TEST_PIN_DIR)
DEBUGFS = Path("/sys/kernel/debug")
KALLSYMS = Path("/proc/kallsyms")

# Where each program a test asks for with @pytest.mark.needs_tool comes from.
TOOL_SOURCES = {
    "bpftool": "Debian package bpftool; setup.sh installs it",
    "prometheus": "Debian package prometheus; setup.sh installs it",
    "promtool": "Debian package prometheus; setup.sh installs it",
    "tmux": "Debian package tmux; setup.sh installs it",
    "systemd-analyze": "Debian package systemd; setup.sh installs it",
    "setpriv": "Debian package util-linux",
    "unshare": "Debian package util-linux",
    "nsenter": "Debian package util-linux",
    "strace": "Debian package strace; setup.sh installs it",
    "findmnt": "Debian package util-linux",
}

# Hypothesis' per-example deadline and too_slow check are claims about speed; a loaded
# machine breaks them without anything being wrong.
settings.register_profile("pcpu-bpf", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pcpu-bpf")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the golden files (tests/fixtures/metrics, tests/fixtures/chunks) "
        "from the current output",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@functools.cache
def privileged_unavailable() -> str | None:
    """Why tests marked privileged cannot run here, with the fix; None when they can."""
    if os.geteuid() != 0:
        return "not root: privileged tests load BPF programs and read debugfs"
    if importlib.util.find_spec("bcc") is None:
        return (
            "bcc is not importable: apt-get install python3-bpfcc and make the venv with "
            "--system-site-packages (setup.sh does both)"
        )
    if not (TRACEFS / "events/percpu/percpu_alloc_percpu").is_dir():
        return f"no percpu tracepoints under {TRACEFS}: mount -t tracefs nodev {TRACEFS}"
    if not (DEBUGFS / "percpu_stats").is_file():
        if not os.path.ismount(DEBUGFS):
            return f"debugfs is not mounted: mount -t debugfs nodev {DEBUGFS}"
        return f"no {DEBUGFS / 'percpu_stats'}: the kernel needs CONFIG_PERCPU_STATS=y"
    if not os.path.ismount(BPFFS):
        return f"bpffs is not mounted: mount -t bpf bpf {BPFFS} (setup.sh does)"
    with KALLSYMS.open() as kallsyms:
        first = kallsyms.readline().split()
        if not first or int(first[0], 16) == 0:
            return (
                f"{KALLSYMS} shows no addresses: needs CAP_SYSLOG and "
                "sysctl -w kernel.kptr_restrict=1"
            )
    return None


@pytest.fixture
def live_backend() -> Generator[Any, None, None]:
    """The live kernel's backend with its defaults, attached for the test and detached."""
    from pcpu_bpf.backends.bpf import BpfBackend

    backend = BpfBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def pin_dir(request: pytest.FixtureRequest) -> Generator[Path, None, None]:
    """A pin directory of this test's own in bpffs, emptied (programs detached) after it."""
    from pcpu_bpf.bpf.pins import remove_set

    path = Path(f"/sys/fs/bpf/pcpu-bpf-test-{os.getpid()}-{request.node.name[:40]}")
    path = path.with_name(path.name.replace("[", "-").replace("]", ""))
    try:
        yield path
    finally:
        remove_set(path)


@pytest.fixture(scope="session", autouse=True)
def _remove_test_pins() -> Generator[None, None, None]:
    """Whatever the session's daemons left pinned is removed (their programs detach)."""
    yield
    if TEST_PIN_DIR.exists():
        from pcpu_bpf.bpf.pins import remove_set

        remove_set(TEST_PIN_DIR)


def missing_tools(item: pytest.Item) -> list[str]:
    """The programs the item's needs_tool markers name that are not on PATH, with the fix."""
    names = dict.fromkeys(name for mark in item.iter_markers("needs_tool") for name in mark.args)
    return [
        f"{name} not installed ({TOOL_SOURCES.get(name, 'not on PATH')})"
        for name in names
        if shutil.which(name) is None
    ]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # The one place that decides whether a marked test can run here: before its fixtures,
    # so nothing half-starts; the reason names the fix.
    reasons = missing_tools(item)
    if item.get_closest_marker("privileged") and (reason := privileged_unavailable()):
        reasons.insert(0, reason)
    if reasons:
        pytest.skip("; ".join(reasons))


def _skips_are_failures() -> bool:
    # CI runs as root on a machine with bcc, the kernel and Prometheus: a test that
    # skips there hides a broken install step, so CI=true turns every skip into a failure.
    return os.environ.get("CI", "").lower() == "true" or bool(os.environ.get("PCPU_NO_SKIP"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and _skips_are_failures() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, None]:
    # The same rule for skips at collection (importorskip, module-level skip).
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and _skips_are_failures():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which forbids skips: {reason}"
