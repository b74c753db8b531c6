"""`pcpu-bpf simulate`: flags that do not fit together, bad policies, extra requests."""

from __future__ import annotations

import pytest

from pcpu_bpf.cli import main


@pytest.mark.parametrize("policy", ["garbage", "every:0", "every:x"])
def test_bad_balance_policy_is_a_usage_error(runner, policy: str) -> None:
    result = runner.invoke(main, ["simulate", "--ops", "1", "--balance", policy])
    assert result.exit_code == 2
    assert "Invalid value for '--balance'" in result.output


@pytest.mark.parametrize("extra", [["--stats"], ["--alloc", "16"]])
def test_json_stands_alone(runner, extra: list[str]) -> None:
    result = runner.invoke(main, ["simulate", "--ops", "1", "--json", *extra])
    assert result.exit_code == 2
    assert "--json prints the Snapshot alone" in result.output


def test_requests_get_their_own_call_site_label(runner) -> None:
    result = runner.invoke(main, ["simulate", "--ops", "0", "--alloc", "64/8"])
    assert result.exit_code == 0, result.output
    assert "0xffffffffc0de0000" in result.output
    assert "unknown" not in result.output
