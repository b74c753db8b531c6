"""scripts/fleet.py's choices, without starting a fleet (a run takes minutes: docs/fleet.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from pcpu_bpf.sim.scenarios import SCENARIOS

FLEET = Path(__file__).resolve().parents[1] / "scripts" / "fleet.py"


def fleet_module():
    spec = importlib.util.spec_from_file_location("fleet", FLEET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_scenario_runs_and_the_mix_holds() -> None:
    fleet = fleet_module()
    assert {name for name, _ in fleet.MIX} == set(SCENARIOS)
    assert sorted(fleet.scenarios(len(SCENARIOS))) == sorted(SCENARIOS)
    fifty = fleet.scenarios(50)
    counts = {name: fifty.count(name) for name in SCENARIOS}
    assert sum(counts.values()) == 50
    assert counts["steady"] > counts["leak"] >= 2
    assert fleet.GROWING <= set(SCENARIOS)


def test_help_and_a_bad_count_are_one_line() -> None:
    ok = subprocess.run([sys.executable, str(FLEET), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--count" in ok.stdout
    bad = subprocess.run([sys.executable, str(FLEET), "-n", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--count must be at least 8" in bad.stderr
