"""Install forms other than the checkout: the wheel and sdist `python -m build` makes, and
the Debian package's layout (debian/: modules in a private directory, /usr/bin wrappers)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from pcpu_bpf import __version__

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pcpu_bpf", "exporters", "bpf_programs")
# What a build must not pick up from a working checkout.
CHECKOUT_ONLY = shutil.ignore_patterns(
    ".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
PRIVATE = "/usr/share/pcpu-bpf"


def package_files() -> set[str]:
    """The files of the three import packages a wheel must carry, relative to the root."""
    wanted = {".py", ".c", ".h", ".typed"}
    return {
        str(path.relative_to(ROOT))
        for name in PACKAGES
        for path in (ROOT / name).rglob("*")
        if path.is_file() and path.suffix in wanted and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel built from it, as `python -m build` does by default, from a
    copy of the checkout (the build writes egg-info and build/ into its source)."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=CHECKOUT_ONLY)
    out = tmp / "out"
    run = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (sdist,) = out.glob("pcpu[-_]bpf-*.tar.gz")
    (wheel,) = out.glob("pcpu_bpf-*-py3-none-any.whl")
    return sdist, wheel


def test_wheel_carries_the_three_packages_and_the_bpf_sources(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
        entry_points = zf.read(meta.replace("METADATA", "entry_points.txt")).decode()
    content = {n for n in names if ".dist-info/" not in n}
    assert content == package_files()
    assert {"bpf_programs/pcpu.bpf.c", "bpf_programs/pcpu.h"} <= content
    assert not any(n.startswith("tests/") for n in names)
    assert f"Version: {__version__}" in metadata
    # Test tools only as an extra, never as what the program needs.
    needs = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    # (Older setuptools write "click (>=8.1)".)
    assert sorted(re.sub(r"[ ()]", "", n) for n in needs if "extra ==" not in n) == [
        "bcrypt>=3.2",
        "click>=8.1",
        "prometheus-client>=0.16",
        "pyyaml>=5.4",
    ]
    assert "pcpu-bpf = pcpu_bpf.cli:main" in entry_points
    assert "pcpu-top = pcpu_bpf.cli.top:main" in entry_points


def test_sdist_carries_the_sources_and_no_tests(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    top = sdist.name.removesuffix(".tar.gz") + "/"
    with tarfile.open(sdist) as tf:
        names = {m.name.removeprefix(top) for m in tf.getmembers() if m.isfile()}
    assert package_files() <= names
    assert {"pyproject.toml", "README.md"} <= names
    assert not any(n.startswith("tests/") for n in names)


def test_versions_agree() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
    debian = re.match(r"pcpu-bpf \(([^)-]+)(-[^)]*)?\) ", changelog)
    assert debian, changelog
    assert pyproject["project"]["version"] == __version__ == debian.group(1)


def test_debian_wrappers_start_the_entry_points() -> None:
    """debian/bin/* are the package's /usr/bin commands: the same mains as the wheel's
    console scripts, from the private directory debian/rules installs to."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert f"PRIVATE := {PRIVATE}\n" in (ROOT / "debian/rules").read_text()
    for command, target in scripts.items():
        wrapper = (ROOT / "debian/bin" / command).read_text()
        module = target.split(":")[0]
        assert f'sys.path.insert(0, "{PRIVATE}")' in wrapper
        assert f"from {module} import main" in wrapper
    unit = (ROOT / "systemd/pcpu-bpf.service").read_text()
    assert "ExecStart=/usr/bin/pcpu-bpf serve\n" in unit


def test_loader_runs_from_a_private_module_directory(tmp_path: Path) -> None:
    """The daemon starts its BPF loader as ``python -m pcpu_bpf.bpf.loader``: from a
    private directory that is not on Python's default path it must import the same code
    (here it gets as far as looking for the BPF source it was pointed at)."""
    private = tmp_path / "private"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, private / name, ignore=CHECKOUT_ONLY)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from pcpu_bpf.bpf.handoff import spawn_loader\n"
        "from pcpu_bpf.bpf.loader import LoadRequest\n"
        "from pcpu_bpf.errors import PcpuError\n"
        "try:\n"
        "    spawn_loader(LoadRequest(sys.argv[2], {}, attach=False), timeout=60)\n"
        "except PcpuError as exc:\n"
        "    print(exc)\n"
    )
    missing = tmp_path / "no-bpf-sources"
    # The system's Python, isolated: no venv, no editable install, no PYTHONPATH.
    run = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", script, str(private), str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    # bcc imports (python3-bpfcc) and the source is missing, or bcc is not there: either
    # way the loader process ran our module, rather than failing to find it.
    assert f"BPF source {missing}/pcpu.bpf.c not found" in run.stdout or (
        "python3-bpfcc" in run.stdout
    ), run.stdout + run.stderr
