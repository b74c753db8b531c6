"""Golden /metrics: a seeded scenario gives byte-exact exposition (pytest --update-golden)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.sim.scenarios import SCENARIOS

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
SEED = 1
OPS = 4000


def exposition(scenario: str) -> bytes:
    """The scenario's /metrics after OPS steps; the clock stands still, so nothing else runs."""
    backend = SimBackend(scenario, seed=SEED, clock=lambda: 0.0)
    backend.advance(OPS)
    registry = CollectorRegistry()  # never the global one: no process/gc/platform metrics
    # A fixed version label: a release must not rewrite every golden file.
    registry.register(PcpuCollector(backend.snapshot, version="golden"))
    return generate_latest(registry)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_golden_exposition(scenario: str, request: pytest.FixtureRequest) -> None:
    path = FIXTURES / f"{scenario}.prom"
    got = exposition(scenario)
    if request.config.getoption("--update-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got)
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    assert got.decode() == path.read_text(), "exposition changed: review, then --update-golden"


def test_every_golden_file_has_a_scenario() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.prom")) == sorted(SCENARIOS)


@pytest.mark.needs_tool("promtool")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_promtool_finds_nothing(scenario: str) -> None:
    text = (FIXTURES / f"{scenario}.prom").read_bytes()
    run = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert (run.returncode, run.stdout + run.stderr) == (0, b"")
