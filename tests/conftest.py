"""Shared fixtures, the --update-golden switch, and CI's rule that nothing skips."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from click.testing import CliRunner


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/fixtures/metrics/*.prom from the current output",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


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
