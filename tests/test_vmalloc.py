"""The simulated vmalloc range: areas stacked down from the top, freed lazily, purged."""

from __future__ import annotations

import pytest

from pcpu_bpf.sim.vmalloc import VMALLOC_END, VmSpace, lazy_max_pages

MIB = 1 << 20


def test_areas_stack_down_from_vmalloc_end_rounded_to_the_atom() -> None:
    vm = VmSpace(nr_cpus=2)
    top = VMALLOC_END & ~(2 * MIB - 1)
    assert [vm.get_area(2 * MIB, 2 * MIB) for _ in range(3)] == [
        top - 2 * MIB,
        top - 4 * MIB,
        top - 6 * MIB,
    ]


def test_an_area_smaller_than_the_atom_ends_on_an_atom_boundary() -> None:
    vm = VmSpace(nr_cpus=2, vmalloc_start=0, vmalloc_end=64 * MIB)
    assert vm.get_area(3 * MIB, 2 * MIB) == 61 * MIB
    # the next one must end at or below 61 MiB rounded down to 2 MiB: 60 MiB
    assert vm.get_area(3 * MIB, 2 * MIB) == 57 * MIB


def test_freed_areas_wait_for_the_purge_then_merge() -> None:
    vm = VmSpace(nr_cpus=1, vmalloc_start=0, vmalloc_end=16 * MIB)
    a, b = vm.get_area(2 * MIB, 2 * MIB), vm.get_area(2 * MIB, 2 * MIB)
    assert (a, b) == (14 * MIB, 12 * MIB)
    assert a is not None and b is not None
    vm.free_area(a, 2 * MIB)
    vm.free_area(b, 2 * MIB)
    assert vm.get_area(2 * MIB, 2 * MIB) == 10 * MIB  # lazy: not yet reusable
    vm.purge()
    assert vm.free_areas == ((0, 10 * MIB), (12 * MIB, 16 * MIB))
    assert vm.get_area(4 * MIB, 2 * MIB) == 12 * MIB


def test_a_search_with_no_room_purges_once_then_gives_up() -> None:
    vm = VmSpace(nr_cpus=64, vmalloc_start=0, vmalloc_end=4 * MIB)
    assert lazy_max_pages(64) == 7 * 8192
    a = vm.get_area(2 * MIB, 2 * MIB)
    b = vm.get_area(2 * MIB, 2 * MIB)
    assert (a, b) == (2 * MIB, 0)
    assert vm.get_area(2 * MIB, 2 * MIB) is None
    vm.free_area(2 * MIB, 2 * MIB)
    assert vm.get_area(2 * MIB, 2 * MIB) == 2 * MIB  # the overflow purged the lazy area


def test_reserving_a_taken_area_is_refused() -> None:
    vm = VmSpace(nr_cpus=2, vmalloc_start=0, vmalloc_end=8 * MIB)
    vm.reserve(2 * MIB, 2 * MIB)
    with pytest.raises(ValueError, match="not free"):
        vm.reserve(3 * MIB, 2 * MIB)
