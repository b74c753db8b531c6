"""The owner behind a helper: the first caller on the stack that is not a known helper."""

from __future__ import annotations

from pcpu_bpf.model.owners import DEFAULT_HELPERS, helper_set, owner_of

HELPERS = helper_set()


def test_a_call_site_that_is_no_helper_owns_its_allocation() -> None:
    assert owner_of("mm_init", ["copy_process", "kernel_clone"], HELPERS) == "mm_init"
    assert owner_of("mm_init", [], HELPERS) == "mm_init"


def test_the_first_caller_outside_the_helpers_owns_it() -> None:
    stack = ["bpf_map_init_elem_count", "htab_map_alloc", "map_create", "__sys_bpf"]
    assert owner_of("bpf_map_alloc_percpu", stack, HELPERS) == "htab_map_alloc"
    assert owner_of("bpf_map_alloc_percpu", ["array_map_alloc", "map_create"], HELPERS) == (
        "array_map_alloc"
    )
    assert owner_of("__percpu_counter_init_many", ["xfrm4_net_init"], HELPERS) == ("xfrm4_net_init")


def test_a_stack_of_helpers_only_names_the_outermost_seen() -> None:
    assert owner_of("__alloc", ["alloc_bulk", "prefill_mem_cache"], HELPERS) == (
        "prefill_mem_cache"
    )
    assert owner_of("percpu_ref_init", [], HELPERS) == "percpu_ref_init"


def test_users_add_helpers() -> None:
    mine = helper_set(["rtnl_create_link", " ", "veth_newlink "])
    assert set(DEFAULT_HELPERS) < mine and "veth_newlink" in mine and "" not in mine
    stack = ["rtnl_create_link", "veth_newlink", "rtnl_newlink"]
    assert owner_of("alloc_netdev_mqs", stack, HELPERS) == "rtnl_create_link"
    assert owner_of("alloc_netdev_mqs", stack, mine) == "rtnl_newlink"
