"""Read the programs' maps (bpf_programs/pcpu.bpf.c) into a `Tables`, summing per-CPU values.

Reading never clears or deletes anything: counters stay cumulative. Every per-CPU value
has a single writer program, so the programs need no atomics; what two programs change
is kept as two monotonic counters and subtracted here: a site's live allocations are
tracked - frees (live bytes: tracked_bytes - freed_bytes), the live table's entries are
inserted - deleted. Sums are modulo 2**64 like the kernel's u64s; live differences are
never below zero (see `_live`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from pcpu_bpf.model.layout import (
    CHUNK_CREATED,
    CHUNK_DESTROYED,
    DROP_REASONS,
    LIVE_DELETED,
    LIVE_INSERTED,
    NR_SIZE_SLOTS,
    SIZE_SUM_SLOT,
)
from pcpu_bpf.model.tables import Histogram, SiteAddressKey, SiteValue, Tables

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1
_FIELDS = (
    "allocations",
    "requested_bytes",
    "allocated_bytes",
    "tracked",
    "tracked_bytes",
    "frees",
    "freed_bytes",
)


def _u64(total: int) -> int:
    return total & _MASK


def _s64(total: int) -> int:
    total &= _MASK
    return total - (1 << 64) if total >> 63 else total


def _live(added: int, removed: int) -> int:
    """added - removed, never below 0.

    The kernel copies a per-CPU value one CPU at a time, not atomically: an allocation
    counted on CPU0 just after CPU0 was read, freed on CPU1 just before CPU1 was read,
    shows as -1 for one read. A live count is never really negative.
    """
    return max(_s64(added - removed), 0)


def read_array(table: Any) -> list[int]:
    """A per-CPU array of u64 as one summed value per index."""
    return [_u64(sum(int(v) for v in table.getvalue(table.Key(i)))) for i in range(len(table))]


def _site_items(table: Any) -> Iterable[tuple[Any, Any]]:
    # One syscall for the whole table where the kernel supports it (5.6+), else key by key.
    try:
        return list(table.items_lookup_batch())
    except Exception as exc:  # bcc raises bare Exception
        log.debug("batch lookup unavailable (%s); iterating keys", exc)
        return list(table.items())


def read_sites(table: Any) -> dict[SiteAddressKey, SiteValue]:
    """The per-CPU site table: (call_site, atomic, reserved) -> summed SiteValue."""
    out: dict[SiteAddressKey, SiteValue] = {}
    for key, per_cpu in _site_items(table):
        f = {name: _u64(sum(getattr(v, name) for v in per_cpu)) for name in _FIELDS}
        out[(int(key.call_site), bool(key.atomic), bool(key.reserved))] = SiteValue(
            allocations=f["allocations"],
            requested_bytes=f["requested_bytes"],
            allocated_bytes=f["allocated_bytes"],
            frees=f["frees"],
            freed_bytes=f["freed_bytes"],
            live_allocations=_live(f["tracked"], f["frees"]),
            live_bytes=_live(f["tracked_bytes"], f["freed_bytes"]),
        )
    return out


def _histogram(values: list[int]) -> Histogram:
    return Histogram(counts=values[:NR_SIZE_SLOTS], sum=values[SIZE_SUM_SLOT])


def read_tables(table: Callable[[str], Any]) -> Tables:
    """Every map, by name through ``table``, into one `Tables`."""
    chunks = read_array(table("pcpu_chunks"))
    live = read_array(table("pcpu_live_count"))
    drops = read_array(table("pcpu_drops"))
    return Tables(
        sites=read_sites(table("pcpu_sites")),
        untracked_frees=read_array(table("pcpu_untracked"))[0],
        sizes=_histogram(read_array(table("pcpu_sizes"))),
        failures=read_array(table("pcpu_failures")),
        failed_sizes=_histogram(read_array(table("pcpu_fail_sizes"))),
        chunk_creations=chunks[CHUNK_CREATED],
        chunk_destructions=chunks[CHUNK_DESTROYED],
        dropped=dict(zip(DROP_REASONS, drops, strict=True)),
        live_entries=_live(live[LIVE_INSERTED], live[LIVE_DELETED]),
    )
