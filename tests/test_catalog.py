"""The catalog's own rules: whose bytes each family counts, label sets that match within a
group, one info metric, and earlier names that the exposition reader still takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporters.catalog import CATALOG, HISTOGRAM, SITE, Family, Table
from exporters.exposition import read_exposition

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
BYTES = [f for f in CATALOG if f.unit == "bytes"]
# What callers ask for: the percpu API's sizes are one unit's by definition.
REQUEST_SIZE = re.compile(r"requested|allocation_size")


@pytest.mark.parametrize("family", BYTES, ids=lambda f: f.name)
def test_every_bytes_family_says_whose_bytes(family: Family) -> None:
    if family.one_unit is None:  # the two boot-time layout sizes that are neither
        assert family.name.endswith("_size_bytes")
        assert "not the bytes of one unit or of all units" in family.help
    elif family.one_unit:
        assert "one unit" in family.help
        assert family.name.endswith(("_unit_bytes", "_size_bytes")) or REQUEST_SIZE.search(
            family.name
        ), f"{family.name}: one unit's bytes, but the name does not say so"
    else:
        assert "all units" in family.help
        assert "_unit_" not in family.name


def test_only_bytes_families_say_whose_bytes() -> None:
    assert all(f.one_unit is None for f in CATALOG if f.unit != "bytes")


def test_every_per_site_family_has_the_same_labels() -> None:
    per_site = [f for f in CATALOG if isinstance(f.binding, Table) and f.binding.key == SITE]
    assert len(per_site) == 9
    assert {f.labels for f in per_site} == {("call_site", "atomic", "reserved", "owner")}


def test_flags_are_spelled_alike_wherever_they_appear() -> None:
    # atomic and reserved come in this order, after call_site, in every family with them.
    for family in CATALOG:
        if "atomic" in family.labels:
            index = family.labels.index("atomic")
            assert family.labels[index : index + 2] == ("atomic", "reserved"), family.name


def test_no_sentinel_call_site() -> None:
    # Untracked frees are families of their own, never a made-up call_site value.
    assert any(f.name == "pcpu_untracked_frees_total" for f in CATALOG)
    assert all("untracked" not in f.labels for f in CATALOG)


def test_one_info_metric_carries_the_build_and_kernel_facts() -> None:
    infos = [f for f in CATALOG if f.name.endswith("_info")]
    assert [f.name for f in infos] == ["pcpu_exporter_info"]
    assert set(infos[0].labels) >= {"version", "kernel", "backend"}
    # Nowhere else: a fact in one place is joined, never repeated on every series.
    assert all("kernel" not in f.labels and "version" not in f.labels for f in CATALOG[1:])


def test_names_are_unique_including_former_ones() -> None:
    names = [n for f in CATALOG for n in (f.name, *f.formerly)]
    assert len(names) == len(set(names))


def test_histograms_have_no_labels() -> None:
    assert all(f.labels == () for f in CATALOG if f.kind == HISTOGRAM)


def test_the_reader_takes_an_earlier_daemon_s_names() -> None:
    new = (FIXTURES / "steady.prom").read_text()
    old = new
    for family in CATALOG:
        for former in family.formerly:
            old = re.sub(rf"\b{family.name}\b", former, old)
    assert old != new
    assert read_exposition(old, 1.0) == read_exposition(new, 1.0)
