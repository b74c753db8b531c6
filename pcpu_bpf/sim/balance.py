"""The percpu balance work (pcpu_balance_workfn): free, reclaim, populate.

Background work on a ChunkPool's lists and counters, apart from the allocation path:
destroy surplus free chunks, depopulate isolated ones, keep empty populated pages for
atomic allocations.
"""

from __future__ import annotations

from pcpu_bpf.sim.chunk import BLOCK_BITS, PAGE_SIZE, Chunk, size_to_slot_raw
from pcpu_bpf.sim.pool import PCPU_EMPTY_POP_PAGES_HIGH, ChunkPool


def balance_workfn(pool: ChunkPool, *, chunks: bool = True) -> None:
    """pcpu_balance_workfn(): the four passes in the kernel's order.

    ``chunks=False`` leaves out what makes and unmakes chunks (the free passes, and the
    creation in the populate pass): a replay takes those from its recording."""
    if chunks:
        balance_free(pool, empty_only=False)
    reclaim_populated(pool)
    balance_populated(pool, create=chunks)
    if chunks:
        balance_free(pool, empty_only=True)


def balance_free(pool: ChunkPool, empty_only: bool) -> None:
    """pcpu_balance_free(): keep the head of the free slot, destroy the others."""
    fl = pool.lists[pool.free_slot]
    if len(fl) < 2:
        return
    keep = fl[0]
    to_free: list[Chunk] = []
    for c in tuple(fl):
        if c is keep:
            continue
        if not empty_only or c.nr_empty_pop_pages == 0:
            pool.unlink(c)
            to_free.insert(0, c)  # list_move() inserts at the head: reverse order
    for c in to_free:
        for rs, re in c.page_runs(True):
            c.chunk_depopulated(rs, re)
        pool.destroy_chunk(c)


def reclaim_populated(pool: ChunkPool) -> None:
    """pcpu_reclaim_populated(): depopulate isolated chunks top-down, then sideline them."""
    counters = pool.counters
    todo = pool.lists[pool.to_depopulate_slot]
    while todo:
        c = todo[0]
        reintegrate = False
        end = -1
        i = c.nr_pages - 1
        while i >= 0:
            if c.nr_empty_pop_pages == 0:
                break
            if counters.nr_empty_pop_pages < PCPU_EMPTY_POP_PAGES_HIGH:
                reintegrate = True  # keep pages for atomic allocations
                break
            if c.md_blocks[i].contig_hint == BLOCK_BITS and c.populated >> i & 1:
                if end == -1:
                    end = i
                if i > 0:
                    i -= 1
                    continue
                i -= 1  # i == -1: flush the range [0, end]
            if end == -1:
                i -= 1
                continue
            c.chunk_depopulated(i + 1, end + 1)  # isolated: global count unchanged
            end = -1
            i -= 1
        if reintegrate or c.free_bytes == pool.unit_size:
            pool.reintegrate(c)  # head of its slot list
        else:
            pool.move(c, pool.sidelined_slot, False)


def balance_populated(pool: ChunkPool, *, create: bool = True) -> None:
    """pcpu_balance_populated(): keep PCPU_EMPTY_POP_PAGES_HIGH empty populated pages."""
    counters = pool.counters
    first_slot = size_to_slot_raw(PAGE_SIZE)
    while True:  # retry_pop:
        if pool.atomic_alloc_failed:
            nr_to_pop = PCPU_EMPTY_POP_PAGES_HIGH
            pool.atomic_alloc_failed = False
        else:
            nr_to_pop = min(max(PCPU_EMPTY_POP_PAGES_HIGH - counters.nr_empty_pop_pages, 0), 4)
        for slot in range(first_slot, pool.free_slot + 1):
            if not nr_to_pop:
                break
            chunk = next((c for c in pool.lists[slot] if c.nr_pages > c.nr_populated), None)
            if chunk is None:
                continue
            for rs, re in chunk.page_runs(False):
                n = min(re - rs, nr_to_pop)
                if pool.populate_ok():
                    nr_to_pop -= n
                    chunk.chunk_populated(rs, rs + n)
                else:
                    nr_to_pop = 0
                if not nr_to_pop:
                    break
        if not nr_to_pop or not create:
            return
        new = pool.create_chunk()
        if new is None:
            return
        pool.relocate(new, -1)
