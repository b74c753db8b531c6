"""The owner behind a helper: the first caller on the stack that is not a known helper.

The rule is the programs' (`owner_address`, on addresses): each case lays its functions
out as a small kallsyms, a stack of return addresses inside them, and names the result.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcpu_bpf.model.owners import DEFAULT_HELPERS, helper_set, owner_address
from pcpu_bpf.model.symbolizer import Symbolizer

HELPERS = helper_set()
FUNCTIONS = sorted(
    set(DEFAULT_HELPERS)
    | {"mm_init", "copy_process", "kernel_clone", "htab_map_alloc", "array_map_alloc"}
    | {"map_create", "__sys_bpf", "xfrm4_net_init", "rtnl_create_link", "veth_newlink"}
    | {"rtnl_newlink", "pcpu_alloc_noprof"}
)
SYMBOLS = Symbolizer.from_symbols(
    {name: 0xFFFFFFFF81000000 + 0x1000 * i for i, name in enumerate(FUNCTIONS)}
)
START = {name: SYMBOLS.ranges([name])[0][0] for name in FUNCTIONS}


def owner(call_site: str, callers: Sequence[str], helpers: frozenset[str]) -> str:
    """The owner's name of an allocation at ``call_site`` whose stack holds ``callers``
    above it (the allocator's frame below it, as the kernel's stack has)."""
    site = START[call_site] + 0x10
    stack = [START["pcpu_alloc_noprof"] + 0x40, site] + [START[c] + 0x20 for c in callers]
    found, _ = owner_address(site, stack, SYMBOLS.ranges(helpers))
    return SYMBOLS.resolve(found) if found else call_site


def test_a_call_site_that_is_no_helper_owns_its_allocation() -> None:
    assert owner("mm_init", ["copy_process", "kernel_clone"], HELPERS) == "mm_init"
    assert owner("mm_init", [], HELPERS) == "mm_init"


def test_the_first_caller_outside_the_helpers_owns_it() -> None:
    stack = ["bpf_map_init_elem_count", "htab_map_alloc", "map_create", "__sys_bpf"]
    assert owner("bpf_map_alloc_percpu", stack, HELPERS) == "htab_map_alloc"
    assert owner("bpf_map_alloc_percpu", ["array_map_alloc", "map_create"], HELPERS) == (
        "array_map_alloc"
    )
    assert owner("__percpu_counter_init_many", ["xfrm4_net_init"], HELPERS) == ("xfrm4_net_init")


def test_a_stack_of_helpers_only_leaves_the_call_site_the_owner_and_says_why() -> None:
    assert owner("__alloc", ["alloc_bulk", "prefill_mem_cache"], HELPERS) == "__alloc"
    assert owner("percpu_ref_init", [], HELPERS) == "percpu_ref_init"
    site = START["__alloc"] + 0x10
    frames = [site, START["alloc_bulk"] + 0x20, START["prefill_mem_cache"] + 0x20]
    assert owner_address(site, frames, SYMBOLS.ranges(HELPERS)) == (0, "only_helpers")
    assert owner_address(site, [], SYMBOLS.ranges(HELPERS)) == (0, "no_stack")
    assert owner_address(site, frames[1:], SYMBOLS.ranges(HELPERS)) == (0, "site_not_on_stack")


def test_users_add_helpers() -> None:
    mine = helper_set(["rtnl_create_link", " ", "veth_newlink "])
    assert set(DEFAULT_HELPERS) < mine and "veth_newlink" in mine and "" not in mine
    stack = ["rtnl_create_link", "veth_newlink", "rtnl_newlink"]
    assert owner("alloc_netdev_mqs", stack, HELPERS) == "rtnl_create_link"
    assert owner("alloc_netdev_mqs", stack, mine) == "rtnl_newlink"
