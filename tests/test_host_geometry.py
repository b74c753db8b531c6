"""`--geometry host`: the simulator's Geometry derived from a machine's own files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.kernel.percpu_stats import read_percpu_stats
from pcpu_bpf.kernel.procfs import read_possible_cpus
from pcpu_bpf.sim.geometry import CONFIG_L
from pcpu_bpf.sim.host import host_geometry

FIXTURES = Path(__file__).parent / "fixtures"
CGROUPS = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t2\t1\t1\n"


def fake_host(tmp_path: Path, cmdline: str, cgroups: str = CGROUPS) -> dict[str, Path]:
    debugfs, proc = tmp_path / "debug", tmp_path / "proc"
    debugfs.mkdir()
    proc.mkdir()
    shutil.copy(FIXTURES / "percpu_stats/live-6.18.txt", debugfs / "percpu_stats")
    (proc / "cmdline").write_text(cmdline)
    (proc / "cgroups").write_text(cgroups)
    return {"debugfs_root": debugfs, "sys_root": FIXTURES / "sys/two-cpus", "proc_root": proc}


def test_reference_machine_gives_config_l(tmp_path: Path) -> None:
    geometry, assumptions = host_geometry(**fake_host(tmp_path, "console=ttyS0 quiet\n"))
    assert geometry == CONFIG_L
    assert "one NUMA group: 2 units for 2 possible CPUs" in assumptions
    assert any(a.startswith("memcg kmem accounting on") for a in assumptions)


@pytest.mark.parametrize(
    ("cmdline", "cgroups"),
    [("quiet cgroup.memory=nokmem\n", CGROUPS), ("quiet\n", "#subsys_name\ncpu\t1\t1\t1\n")],
)
def test_memcg_accounting_off(tmp_path: Path, cmdline: str, cgroups: str) -> None:
    geometry, assumptions = host_geometry(**fake_host(tmp_path, cmdline, cgroups))
    assert not geometry.memcg_kmem
    assert geometry.bytes_alloc(24) == 48
    assert "memcg kmem accounting off" in assumptions


def test_impossible_geometry_is_refused(tmp_path: Path) -> None:
    roots = fake_host(tmp_path, "quiet\n")
    stats = roots["debugfs_root"] / "percpu_stats"
    stats.write_text(stats.read_text().replace("      1048576", "            0", 1))
    with pytest.raises(ScenarioError, match="impossible geometry"):
        host_geometry(**roots)


def test_missing_percpu_stats_is_an_oserror(tmp_path: Path) -> None:
    roots = fake_host(tmp_path, "quiet\n")
    (roots["debugfs_root"] / "percpu_stats").unlink()
    with pytest.raises(OSError):
        host_geometry(**roots)


def test_simulate_geometry_host_without_debugfs_is_one_line(runner, monkeypatch) -> None:
    from pcpu_bpf.cli import main
    from pcpu_bpf.sim import host

    def no_debugfs(*_a: object, **_k: object) -> object:
        raise FileNotFoundError(2, "No such file or directory", "/sys/kernel/debug/percpu_stats")

    monkeypatch.setattr(host, "read_percpu_stats", no_debugfs)
    result = runner.invoke(main, ["simulate", "--geometry", "host", "--ops", "10"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --geometry host needs the live percpu_stats")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.privileged
def test_live_host_geometry_matches_its_percpu_stats() -> None:
    geometry, _ = host_geometry()
    info = read_percpu_stats().info
    assert (geometry.unit_size, geometry.static_size, geometry.dyn_size) == (
        info.unit_size,
        info.static_size,
        info.dyn_size,
    )
    assert geometry.nr_possible_cpus == read_possible_cpus()
