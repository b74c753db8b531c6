"""BPF maps as owners: every map on the host listed through bpf(2), with its percpu bytes,
its type and the programs that use it; exported as pcpu_bpf_map_percpu_bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from bpf_progs import attached_to_cgroup, load_map_user, load_storage_user
from prometheus_client import CollectorRegistry
from test_exporter import full_snapshot, read, value
from test_map_percpu import cgroups

from exporters.prometheus import PcpuCollector
from pcpu_bpf.backends import host_stats
from pcpu_bpf.backends.host_stats import HostStatsReader, bpf_map_owners
from pcpu_bpf.bpf import syscalls
from pcpu_bpf.bpf.host_maps import HostMap, host_maps
from pcpu_bpf.kernel.procfs import read_possible_cpus
from pcpu_bpf.model.kernel_stats import BpfMapOwner, KernelStats
from pcpu_bpf.model.ranking import OTHER, top_n

TAG = f"o{os.getpid() % 10**6}"  # map and program names are at most 15 characters


@contextmanager
def owned_maps() -> Iterator[dict[str, int]]:
    """Two per-CPU arrays, a per-CPU hash and a plain array, and a program using three."""
    with ExitStack() as stack:
        fds = {
            "a": syscalls.create_map(syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12, 3, f"{TAG}_a"),
            "b": syscalls.create_map(syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 1000, 16, f"{TAG}_b"),
            "h": syscalls.create_map(syscalls.BPF_MAP_TYPE_PERCPU_HASH, 8, 20, 10, f"{TAG}_h"),
            "z": syscalls.create_map(syscalls.BPF_MAP_TYPE_ARRAY, 4, 8, 4, f"{TAG}_z"),
        }
        for fd in fds.values():
            stack.callback(os.close, fd)
        prog = load_map_user(f"{TAG}_user", [fds["a"], fds["b"], fds["z"]])
        stack.callback(os.close, prog)
        yield fds


def _ours(maps: list[HostMap]) -> dict[str, HostMap]:
    return {m.name: m for m in maps if m.name.startswith(TAG + "_")}


@pytest.mark.privileged
def test_the_listing_has_the_tests_maps_with_exact_percpu_bytes() -> None:
    cpus = read_possible_cpus()
    with owned_maps():
        ours = _ours(list(host_maps(cpus, os.cpu_count() or 1)))
    user = (f"{TAG}_user",)
    assert ours == {
        f"{TAG}_a": HostMap(ours[f"{TAG}_a"].id, f"{TAG}_a", "percpu_array", user, 3 * 16 * cpus),
        f"{TAG}_b": HostMap(
            ours[f"{TAG}_b"].id, f"{TAG}_b", "percpu_array", user, 16 * 1000 * cpus
        ),
        # element count, ten 24-byte values, the free list's heads
        f"{TAG}_h": HostMap(
            ours[f"{TAG}_h"].id, f"{TAG}_h", "percpu_hash", (), (8 + 240 + 16) * cpus
        ),
    }  # the plain array holds no percpu memory: not listed


@pytest.mark.privileged
def test_cgroup_storages_are_counted_as_they_are_attached() -> None:
    cpus = read_possible_cpus()
    storage = syscalls.create_map(
        syscalls.BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE, 16, 20, 0, f"{TAG}_st"
    )
    prog = load_storage_user(f"{TAG}_stp", storage)
    try:
        assert f"{TAG}_st" not in _ours(list(host_maps(cpus, os.cpu_count() or 1)))
        with cgroups(2) as made, ExitStack() as stack:
            for path in made:
                stack.enter_context(attached_to_cgroup(prog, path))
            got = _ours(list(host_maps(cpus, os.cpu_count() or 1)))[f"{TAG}_st"]
        assert (got.type_name, got.programs, got.percpu_bytes) == (
            "percpu_cgroup_storage",
            (f"{TAG}_stp",),
            2 * 20 * cpus,
        )
    finally:
        os.close(prog)
        os.close(storage)


@pytest.mark.privileged
def test_the_daemons_family_names_map_type_and_program() -> None:
    cpus = read_possible_cpus()
    reader = HostStatsReader(possible_cpus=cpus, max_bpf_maps=10**6)
    with owned_maps():
        stats = reader.add_owners(KernelStats())
    assert "bpf_maps" not in stats.errors and stats.bpf_maps is not None
    registry = CollectorRegistry()
    registry.register(PcpuCollector(lambda: full_snapshot(kernel_stats=stats)))
    samples = read(registry)
    family = "pcpu_bpf_map_percpu_bytes"
    user = f"{TAG}_user"
    assert value(samples, family, map=f"{TAG}_a", map_type="percpu_array", program=user) == (
        48 * cpus
    )
    assert value(samples, family, map=f"{TAG}_h", map_type="percpu_hash", program="") == (
        264 * cpus
    )
    assert value(samples, "pcpu_collector_success", collector="bpf_maps") == 1


def test_owners_of_one_name_add_up_and_the_rest_is_other(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [
        HostMap(1, "counters", "percpu_array", ("agent",), 800),
        HostMap(2, "counters", "percpu_array", ("agent",), 200),
        HostMap(3, "policy", "percpu_hash", ("a", "b", "c", "d", "e"), 5000),
        HostMap(4, "small", "hash", (), 64),
        HostMap(5, "tiny", "hash", (), 32),
    ]
    monkeypatch.setattr(host_stats, "host_maps", lambda possible, online: iter(listed))
    assert bpf_map_owners(2, 2, limit=2) == {
        BpfMapOwner("policy", "percpu_hash", "a,b,c,+2 more"): 5000,
        BpfMapOwner("counters", "percpu_array", "agent"): 1000,
        BpfMapOwner(OTHER, "", ""): 96,
    }


def test_top_n_keeps_everything_when_it_fits() -> None:
    assert top_n({"a": 1, "b": 3}, 2, OTHER) == {"b": 3, "a": 1}
    assert top_n({"a": 1, "b": 3, "c": 2}, 1, OTHER) == {"b": 3, OTHER: 3}
    assert top_n({}, 3, OTHER) == {}


def test_without_cap_sys_admin_the_part_is_unavailable_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader says why in the part's error; the collector logs it, once."""

    def refused(possible: int, online: int) -> Iterator[HostMap]:
        raise PermissionError(1, "bpf(BPF_PROG_GET_NEXT_ID): Operation not permitted")

    monkeypatch.setattr(host_stats, "host_maps", refused)
    reader = HostStatsReader(possible_cpus=2)
    kernel = KernelStats(meminfo_percpu_bytes=4096)
    first, second = reader.add_owners(kernel), reader.add_owners(kernel)
    assert first.bpf_maps is None and first.meminfo_percpu_bytes == 4096
    assert "CAP_SYS_ADMIN" in first.errors["bpf_maps"] == second.errors["bpf_maps"]
    assert caplog.records == []
    registry = CollectorRegistry()
    registry.register(PcpuCollector(lambda: full_snapshot(kernel_stats=first)))
    samples = read(registry)
    read(registry)
    said = [r.message for r in caplog.records if "CAP_SYS_ADMIN" in r.message]
    assert said == [
        "collector bpf_maps failed, rest of /metrics served: " + host_stats._NEEDS_ADMIN
    ]
    assert value(samples, "pcpu_collector_success", collector="bpf_maps") == 0
    assert not any(name == "pcpu_bpf_map_percpu_bytes" for name, _ in samples)
