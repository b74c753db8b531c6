from __future__ import annotations

from pathlib import Path

import pytest

from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.kernel.procfs import (
    kernel_release,
    parse_cpu_list,
    parse_meminfo_percpu,
    parse_possible_cpus,
    read_meminfo_percpu,
    read_possible_cpus,
)

FIXTURES = Path(__file__).parent / "fixtures"
PROC = FIXTURES / "proc"
SYS = FIXTURES / "sys"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Percpu:              712 kB\n", 712 * 1024),
        ("MemTotal:        4000000 kB\nPercpu:                0 kB\nHugePages_Total: 0\n", 0),
        ("Percpu:          2097152 kB   \n", 2097152 * 1024),
        ("Percpu:            64 kB", 64 * 1024),
    ],
)
def test_parse_meminfo_percpu(text, expected):
    assert parse_meminfo_percpu(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("MemTotal:        4000000 kB\n", "no 'Percpu:' line"),
        ("", "no 'Percpu:' line"),
        ("MemTotal: 1 kB\nPercpu:              7x2 kB\n", "line 2: .*7x2"),
        ("Percpu:              712\n", "line 1: .*712"),
        ("Percpu:              712 MB\n", "line 1: .*MB"),
        ("Percpu:             -712 kB\n", "line 1: .*-712"),
        ("Percpu:               ٧ kB\n", "line 1: "),
        ("Percpu: 1 kB\nPercpu: 2 kB\n", "line 2: second"),
    ],
)
def test_parse_meminfo_percpu_rejects(text, match):
    with pytest.raises(StatsParseError, match=match):
        parse_meminfo_percpu(text)


def test_read_meminfo_percpu_from_a_proc_root():
    assert read_meminfo_percpu(PROC / "live-6.18") == 712 * 1024
    assert read_meminfo_percpu(str(PROC / "live-6.18")) == 712 * 1024


@pytest.mark.parametrize(
    ("case", "match"),
    [("no-percpu", "no 'Percpu:' line"), ("corrupt-percpu", r"meminfo line \d+: .*7x2")],
)
def test_read_meminfo_percpu_bad_fixtures(case, match):
    with pytest.raises(StatsParseError, match=match):
        read_meminfo_percpu(PROC / case)


def test_read_meminfo_percpu_propagates_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_meminfo_percpu(tmp_path)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0\n", (0,)),
        ("0-1\n", (0, 1)),
        ("0,2-5\n", (0, 2, 3, 4, 5)),
        ("0-3,2-5", (0, 1, 2, 3, 4, 5)),
        ("7,3", (3, 7)),
    ],
)
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_possible_cpus(text) == len(cpus)


@pytest.mark.parametrize("text", ["", "\n", "a", "3-1", "0-", "-1", "0,,1", "0 1", "0-70000"])
def test_parse_cpu_list_rejects(text):
    with pytest.raises(StatsParseError, match="cpu list"):
        parse_possible_cpus(text)


@pytest.mark.parametrize(("case", "count"), [("two-cpus", 2), ("sparse", 5)])
def test_read_possible_cpus(case, count):
    assert read_possible_cpus(SYS / case) == count


def test_kernel_release():
    assert kernel_release(PROC / "live-6.18") == "6.18.44-fc-v769"
