"""The BPF side is configured only from Python: the loader's defines, capacity bounds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import pcpu_bpf.backends.bpf as bpf_backend
from pcpu_bpf.backends.bpf import BpfBackend
from pcpu_bpf.bpf.loader import default_bpf_dir, program_defines, recorder_defines
from pcpu_bpf.bpf.tracefs import read_layout
from pcpu_bpf.cli import main
from pcpu_bpf.errors import BackendUnavailable, ProgramLoadError
from pcpu_bpf.model.layout import MAX_TABLE_CAPACITY

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"

# What the C names itself or takes from bcc and the kernel headers.
NOT_FROM_PYTHON = {"BPF_TABLE", "EEXIST", "BPF_RINGBUF_OUTPUT"}
PROFILER = ("pcpu.h", "pcpu.bpf.c")
RECORDER = ("record.h", "record.bpf.c")


def c_text(names: tuple[str, str] = PROFILER) -> str:
    """A program's header and source, comments removed."""
    text = "\n".join((default_bpf_dir() / name).read_text() for name in names)
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def defines(version: str) -> dict[str, int]:
    return program_defines(
        read_layout(FIXTURES / version), live_capacity=8, site_capacity=8, nr_possible_cpus=2
    )


def test_the_sources_are_two_programs_each_one_file_and_its_header() -> None:
    names = sorted(p.name for p in default_bpf_dir().iterdir() if p.suffix in (".c", ".h"))
    assert names == sorted(PROFILER + RECORDER)


def recorder(version: str) -> dict[str, int]:
    return recorder_defines(read_layout(FIXTURES / version), ring_pages=16)


def test_the_recorder_uses_every_define_and_only_those() -> None:
    text = c_text(RECORDER)
    used = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", text)) - NOT_FROM_PYTHON
    assert used == set(recorder("6.18")), used ^ set(recorder("6.18"))
    assert not set(re.findall(r"^\s*#\s*define\s+(\w+)", text, flags=re.M))
    for name in set(recorder("6.18")) - set(recorder("5.15")):
        assert f"#ifdef {name}" in text, name


def test_c_defines_no_shared_number() -> None:
    text = c_text()
    shared = set(defines("6.18"))
    defined = set(re.findall(r"^\s*#\s*define\s+(\w+)", text, flags=re.M))
    defaulted = set(re.findall(r"^\s*#\s*(?:ifndef\s+(\w+)|if\s+!\s*defined)", text, flags=re.M))
    assert not defined & shared, defined & shared
    assert defaulted == set(), defaulted


@pytest.mark.parametrize("version", ["6.18", "5.15"])
def test_every_define_the_loader_builds_is_used(version: str) -> None:
    words = set(re.findall(r"\b\w+\b", c_text()))
    assert set(defines(version)) <= words, set(defines(version)) - words


def test_every_constant_the_c_uses_comes_from_the_loader() -> None:
    text = c_text()
    used = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", text)) - NOT_FROM_PYTHON
    assert used == set(defines("6.18")), used ^ set(defines("6.18"))
    # What an older kernel lacks the C reads only under #ifdef.
    for name in set(defines("6.18")) - set(defines("5.15")):
        assert f"#ifdef {name}" in text, name


@pytest.mark.parametrize("value", [0, -1, MAX_TABLE_CAPACITY + 1, 1 << 31, 1 << 32])
@pytest.mark.parametrize("what", ["live_capacity", "site_capacity"])
def test_capacity_out_of_range_is_refused_before_compiling(
    monkeypatch: pytest.MonkeyPatch, what: str, value: int
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise AssertionError("reached past the capacity check")

    monkeypatch.setattr(bpf_backend, "read_layout", unreachable)
    monkeypatch.setattr(bpf_backend, "spawn_loader", unreachable)
    with pytest.raises(BackendUnavailable) as err:
        BpfBackend(**{what: value})
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{what} must be between 1 and {MAX_TABLE_CAPACITY}" in msg and str(value) in msg


def test_the_largest_capacity_passes_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    class Reached(Exception):
        pass

    def reached(*args: object, **kwargs: object) -> None:
        raise Reached

    monkeypatch.setattr(bpf_backend, "read_layout", reached)
    # Past the check: the tracepoints are read next (or bcc is missing, before that).
    with pytest.raises((Reached, BackendUnavailable)) as err:
        BpfBackend(live_capacity=MAX_TABLE_CAPACITY, site_capacity=MAX_TABLE_CAPACITY)
    assert "must be between" not in str(err.value)


@pytest.mark.parametrize("option", ["--live-capacity", "--site-capacity"])
@pytest.mark.parametrize("backend", ["bpf", "sim"])
def test_serve_refuses_a_capacity_out_of_range(option: str, backend: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--backend", backend, option, str(1 << 32)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.output
    assert f"1<=x<={MAX_TABLE_CAPACITY}" in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.privileged
def test_a_load_failure_says_what_the_compiler_or_verifier_said(tmp_path: Path) -> None:
    # The loader's stderr (bcc's compiler and verifier output) is the only account of why
    # a kernel refused the programs; the error carries its last lines.
    (tmp_path / "pcpu.h").write_text((default_bpf_dir() / "pcpu.h").read_text())
    (tmp_path / "pcpu.bpf.c").write_text("int on_alloc(void *ctx) { return undeclared_name; }\n")
    with pytest.raises(ProgramLoadError) as err:
        BpfBackend(bpf_dir=tmp_path)
    assert "(loader: " in str(err.value) and "undeclared_name" in str(err.value), err.value
