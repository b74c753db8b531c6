"""The README opens with the two commands, and CI runs the second one verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands() -> None:
    assert (ROOT / "README.md").read_text().startswith("# pcpu-bpf\n\n```\n")
    assert readme_commands() == [
        "bash setup.sh && .venv/bin/pcpu-top",
        "bash setup.sh && .venv/bin/python -m pytest",
    ]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert ci[-1] == readme_commands()[1]
    assert "export CI=true" in ci
