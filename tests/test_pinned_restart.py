"""A daemon restart adopts the pinned set: counts continue, frees stay tracked; a set that
does not fit is replaced and says so; the daemon never maps bcc or LLVM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_helpers import PCPU_BPF, Daemon, Samples, parse
from waiting import wait_until

from pcpu_bpf.bpf import pins, syscalls

pytestmark = pytest.mark.privileged

SITE = frozenset(
    {
        ("call_site", "bpf_map_alloc_percpu"),
        ("atomic", "false"),
        ("reserved", "false"),
        ("owner", "bpf_map_alloc_percpu"),
    }
)
# A value size nothing else on the host asks for in the window.
VALUE_SIZE, ENTRIES = 1000, 37


def site(samples: Samples, family: str) -> float:
    return samples.get((family, SITE), 0.0)


def scalar(samples: Samples, family: str) -> float:
    return samples[(family, frozenset())]


def start(pin_dir: Path, *args: str) -> Daemon:
    daemon = Daemon("--backend", "bpf", "--pin-dir", str(pin_dir), *args)
    daemon.wait_ready()
    return daemon


def stop(daemon: Daemon) -> str:
    code, err = daemon.stop()
    assert code == 0, err
    return err


def test_restart_keeps_the_live_table_and_the_counters(pin_dir: Path) -> None:
    first = start(pin_dir)
    try:
        before = parse(first.scrape())
        fd = syscalls.create_percpu_array(VALUE_SIZE, ENTRIES)

        def counted() -> Samples | None:
            s = parse(first.scrape())
            grown = site(s, "pcpu_allocations_total") - site(before, "pcpu_allocations_total")
            return s if grown >= ENTRIES else None

        held = wait_until(counted, what=f"the {ENTRIES} allocations of the map")
    finally:
        stop(first)
    assert site(held, "pcpu_allocations_total") - site(before, "pcpu_allocations_total") >= ENTRIES
    second = start(pin_dir)
    try:
        adopted = parse(second.scrape())
        syscalls.close(fd)  # freed after the restart, by a kworker

        def freed() -> Samples | None:
            s = parse(second.scrape())
            done = site(s, "pcpu_frees_total") - site(held, "pcpu_frees_total") >= ENTRIES
            return s if done else None

        after = wait_until(freed, what=f"the {ENTRIES} frees of the map held across the restart")
    finally:
        err = stop(second)
    assert "adopted the pinned set" in err
    started = scalar(before, "pcpu_tracking_start_time_seconds")
    assert scalar(adopted, "pcpu_tracking_start_time_seconds") == started
    assert scalar(after, "pcpu_tracking_start_time_seconds") == started
    for family in ("pcpu_allocations_total", "pcpu_allocated_bytes_total"):
        assert site(adopted, family) >= site(held, family), family  # never goes back
    # Every free is a tracked free of the site: the live table survived the restart.
    assert site(after, "pcpu_frees_total") - site(held, "pcpu_frees_total") == ENTRIES
    freed = site(after, "pcpu_freed_bytes_total") - site(held, "pcpu_freed_bytes_total")
    allocated = site(held, "pcpu_allocated_bytes_total") - site(
        before, "pcpu_allocated_bytes_total"
    )
    assert freed == allocated
    assert site(after, "pcpu_live_bytes") == site(before, "pcpu_live_bytes")
    assert site(after, "pcpu_live_allocations") == site(before, "pcpu_live_allocations")


def damage(pin_dir: Path) -> str:
    (pins.current(pin_dir) / pins.link_pin("percpu_free_percpu")).unlink()
    return "link_percpu_free_percpu is missing"


def before_chunk_maps(pin_dir: Path) -> str:
    """A set pinned by a version without the chunk table: its two maps are not there."""
    for name in ("pcpu_chunks", "pcpu_chunk_info"):
        (pins.current(pin_dir) / pins.map_pin(name)).unlink()
    return f"{pins.map_pin('pcpu_chunks')} is missing"


def other_version(pin_dir: Path) -> str:
    """The layout record of another version of the programs (same map sizes)."""
    import struct

    from pcpu_bpf.bpf.maps import META_FORMAT

    fd = syscalls.obj_get(pins.current(pin_dir) / pins.map_pin("pcpu_meta"))
    try:
        meta = pins.read_meta(fd)
        value = struct.pack(META_FORMAT, b"\0" * 32, meta.started_ns, meta.percpu_bytes_per_cpu)
        syscalls.update_elem(fd, struct.pack("<I", 0), value)
    finally:
        os.close(fd)
    return "its layout record differs"


@pytest.mark.parametrize(
    ("first_args", "change", "reason"),
    [
        (("--live-capacity", "4096"), None, "map pcpu_live is hash key 8 value 24 entries 4096"),
        ((), damage, "link_percpu_free_percpu is missing"),
        ((), other_version, "its layout record differs"),
        ((), before_chunk_maps, f"{pins.map_pin('pcpu_chunks')} is missing"),
    ],
    ids=["other-sizes", "damaged", "other-version", "before-chunk-maps"],
)
def test_a_set_that_does_not_fit_is_replaced(
    pin_dir: Path, first_args: tuple[str, ...], change: object, reason: str
) -> None:
    first = start(pin_dir, *first_args)
    try:
        old = parse(first.scrape())
    finally:
        stop(first)
    if callable(change):
        change(pin_dir)
    second = start(pin_dir)
    try:
        new = parse(second.scrape())
    finally:
        err = stop(second)
    assert f"replacing the pinned set in {pin_dir}: {reason}" in err, err
    old_start = scalar(old, "pcpu_tracking_start_time_seconds")
    assert scalar(new, "pcpu_tracking_start_time_seconds") > old_start
    assert [p.name for p in pin_dir.iterdir()] == ["current"]  # no staging or old left
    capacity = frozenset({("map", "live")})
    assert new[("pcpu_bpf_map_capacity", capacity)] == 262_144


def test_the_daemon_never_maps_bcc_or_llvm(pin_dir: Path) -> None:
    daemon = start(pin_dir)
    try:
        mapped = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    finally:
        stop(daemon)
    for library in ("libbcc", "LLVM", "libclang"):
        assert library not in mapped, f"{PCPU_BPF} maps {library}"
