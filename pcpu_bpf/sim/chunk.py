"""One percpu chunk: bitmaps, block metadata, hint upkeep (mm/percpu.c), stats walk.

Bitmaps are lists of Python ints, one 1024-bit int per block (= page), so every
bit search is a few shifts and ``bit_length`` calls instead of a per-bit loop.
"""

from __future__ import annotations

BLOCK_BITS = 1024  # PCPU_BITMAP_BLOCK_BITS: one block is one page
MIN_ALLOC_SIZE = 4  # PCPU_MIN_ALLOC_SIZE: one bitmap bit
PAGE_SIZE = 4096
_FULL = (1 << BLOCK_BITS) - 1


def size_to_slot_raw(size: int) -> int:
    """__pcpu_size_to_slot(): slot of a free run of ``size`` bytes."""
    return max(size.bit_length() - 5 + 2, 1)


def _ffs(x: int) -> int:
    """__ffs(): index of the lowest set bit (x != 0)."""
    return (x & -x).bit_length() - 1


def _next_zero_in_block(x: int, start: int) -> int:
    """find_next_zero_bit() on one block; 1024 when none."""
    if start >= BLOCK_BITS:
        return BLOCK_BITS
    f = ~x >> start  # bits above 1023 of ~x are ones, so this caps at 1024
    return start + _ffs(f)


def _last_set_in_block(x: int, size: int) -> int:
    """find_last_bit(): highest set bit below ``size``, or ``size`` when none."""
    y = x & ((1 << size) - 1)
    return y.bit_length() - 1 if y else size


class BlockMd:
    """pcpu_block_md: hints of one block, or of a whole chunk (chunk_md); all in bits."""

    __slots__ = (
        "contig_hint",
        "contig_hint_start",
        "scan_hint",
        "scan_hint_start",
        "left_free",
        "right_free",
        "first_free",
        "nr_bits",
    )

    def __init__(self, nr_bits: int) -> None:
        # pcpu_init_md_block(); the *_start fields start zeroed (kzalloc).
        self.nr_bits = nr_bits
        self.contig_hint = nr_bits
        self.contig_hint_start = 0
        self.scan_hint = 0
        self.scan_hint_start = 0
        self.left_free = nr_bits
        self.right_free = nr_bits
        self.first_free = 0

    def as_dict(self) -> dict[str, int]:
        """All fields by name (for tests and debugging)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return (
            f"BlockMd(contig {self.contig_hint}@{self.contig_hint_start}, "
            f"scan {self.scan_hint}@{self.scan_hint_start}, left {self.left_free}, "
            f"right {self.right_free}, first_free {self.first_free})"
        )


def block_update(b: BlockMd, start: int, end: int) -> None:
    """pcpu_block_update(): record the free run [start, end) in ``b``."""
    contig = end - start
    if start < b.first_free:
        b.first_free = start
    if start == 0:
        b.left_free = contig
    if end == b.nr_bits:
        b.right_free = contig
    ch = b.contig_hint
    if contig > ch:
        if start > b.contig_hint_start:
            if ch > b.scan_hint:  # old contig becomes the scan hint
                b.scan_hint_start = b.contig_hint_start
                b.scan_hint = ch
            elif start < b.scan_hint_start:
                b.scan_hint = 0
        else:
            b.scan_hint = 0
        b.contig_hint_start = start
        b.contig_hint = contig
    elif contig == ch:
        chs = b.contig_hint_start
        if chs and (not start or (start & -start) > (chs & -chs)):  # __ffs() compare
            b.contig_hint_start = start  # better-aligned start wins ties
            if start < b.scan_hint_start and ch > b.scan_hint:
                b.scan_hint = 0
        elif start > b.scan_hint_start or ch > b.scan_hint:
            b.scan_hint_start = start
            b.scan_hint = contig
    elif start < b.contig_hint_start and (
        contig > b.scan_hint or (contig == b.scan_hint and start > b.scan_hint_start)
    ):
        b.scan_hint_start = start
        b.scan_hint = contig


def _next_hint(b: BlockMd, alloc_bits: int) -> int:
    """pcpu_next_hint(): skip a scan run known to be too small."""
    if b.scan_hint and b.contig_hint_start > b.scan_hint_start and alloc_bits > b.scan_hint:
        return b.scan_hint_start + b.scan_hint
    return b.first_free


def _copy_md(b: BlockMd) -> BlockMd:
    c = BlockMd.__new__(BlockMd)
    for name in BlockMd.__slots__:
        setattr(c, name, getattr(b, name))
    return c


class GlobalCounters:
    """The allocator-wide counters a chunk updates (pcpu_nr_empty_pop_pages, pcpu_nr_populated)."""

    __slots__ = ("nr_empty_pop_pages", "nr_populated")

    def __init__(self) -> None:
        self.nr_empty_pop_pages = 0
        self.nr_populated = 0


class Chunk:
    """struct pcpu_chunk (mm/percpu-internal.h): bookkeeping of one chunk."""

    __slots__ = (
        "base_addr",
        "nr_pages",
        "map_bits",
        "amap",
        "bmap",
        "full_mask",
        "empty_mask",
        "md_blocks",
        "chunk_md",
        "free_bytes",
        "start_offset",
        "end_offset",
        "immutable",
        "isolated",
        "is_reserved",
        "populated",
        "nr_populated",
        "nr_empty_pop_pages",
        "nr_alloc",
        "max_alloc_size",
        "list_slot",
        "counters",
        "_frag",
    )

    def __init__(self, nr_pages: int, base_addr: int, counters: GlobalCounters) -> None:
        """pcpu_alloc_chunk(): an empty, unpopulated chunk on no list."""
        self.base_addr = base_addr
        self.nr_pages = nr_pages
        self.map_bits = nr_pages * BLOCK_BITS
        self.amap = [0] * nr_pages  # alloc_map, one int per block
        self.bmap = [0] * (nr_pages + 1)  # bound_map has map_bits + 1 bits
        # block k is entirely allocated / entirely free: lets searches skip such
        # blocks in one step, with exactly the kernel's outcome (see the users)
        self.full_mask = 0
        self.empty_mask = (1 << nr_pages) - 1
        self.md_blocks = [BlockMd(BLOCK_BITS) for _ in range(nr_pages)]
        self.chunk_md = BlockMd(self.map_bits)
        self.free_bytes = nr_pages * PAGE_SIZE
        self.start_offset = 0
        self.end_offset = 0
        self.immutable = False
        self.isolated = False
        self.is_reserved = False
        self.populated = 0  # bitmask of populated pages
        self.nr_populated = 0
        self.nr_empty_pop_pages = 0
        self.nr_alloc = 0
        self.max_alloc_size = 0
        self.list_slot: int | None = None  # the list it is on; not always pcpu_chunk_slot()
        self.counters = counters
        # frag_stats() memo: (start_offset, end_offset, result); None once amap or
        # bmap change (every writer of either map resets it)
        self._frag: tuple[int, int, tuple[int, int, int, int, int]] | None = None

    def clone(self) -> Chunk:
        """An independent copy of the maps and hints, for trying something out; its page
        counts go to counters of its own, not to the allocator's."""
        c = Chunk.__new__(Chunk)
        for name in self.__slots__:
            setattr(c, name, getattr(self, name))
        c.amap = list(self.amap)
        c.bmap = list(self.bmap)
        c.md_blocks = [_copy_md(b) for b in self.md_blocks]
        c.chunk_md = _copy_md(self.chunk_md)
        c.counters = GlobalCounters()
        c.list_slot = None
        return c

    # ---- read-only views for tests ------------------------------------------------

    def populated_pages(self) -> list[int]:
        """Indexes of the populated pages, ascending."""
        p = self.populated
        return [i for i in range(self.nr_pages) if p >> i & 1]

    def test_alloc_bit(self, bit: int) -> bool:
        """test_bit(bit, alloc_map)."""
        return bool(self.amap[bit >> 10] >> (bit & 1023) & 1)

    # ---- chunk-wide bit helpers ---------------------------------------------------

    def _next_zero(self, start: int, size: int) -> int:
        """find_next_zero_bit(alloc_map, size, start)."""
        k = start >> 10
        nb = (size + 1023) >> 10
        if k >= nb:
            return size
        r = _next_zero_in_block(self.amap[k], start & 1023)
        if r < BLOCK_BITS:
            return min((k << 10) + r, size)
        k += 1 + _ffs(~self.full_mask >> (k + 1))  # next block that is not full
        if k >= nb:
            return size
        return min((k << 10) + _ffs(~self.amap[k]), size)

    @staticmethod
    def _next_set(blocks: list[int], start: int, size: int) -> int:
        """find_next_bit(map, size, start) on a block list."""
        k = start >> 10
        nb = (size + 1023) >> 10
        if k < nb:
            f = blocks[k] >> (start & 1023)
            if f:
                return min(start + _ffs(f), size)
            k += 1
            while k < nb:
                x = blocks[k]
                if x:
                    return min((k << 10) + _ffs(x), size)
                k += 1
        return size

    def _last_set(self, size: int) -> int:
        """find_last_bit(alloc_map, size): highest set bit below size, else size."""
        amap = self.amap
        k = (size - 1) >> 10
        if k < 0:
            return size
        y = amap[k] & ((1 << (size - (k << 10))) - 1)
        while True:
            if y:
                return (k << 10) + y.bit_length() - 1
            k -= 1
            if k < 0:
                return size
            y = amap[k]

    def _amap_set(self, start: int, n: int) -> None:
        """bitmap_set(alloc_map, start, n), keeping the block masks."""
        self._frag = None
        amap = self.amap
        end = start + n
        while start < end:
            k = start >> 10
            lo = start & 1023
            hi = min(end - (k << 10), BLOCK_BITS)
            x = amap[k] | (((1 << (hi - lo)) - 1) << lo)
            amap[k] = x
            self.empty_mask &= ~(1 << k)
            if x == _FULL:
                self.full_mask |= 1 << k
            start = (k << 10) + hi

    def _amap_clear(self, start: int, n: int) -> None:
        """bitmap_clear(alloc_map, start, n), keeping the block masks."""
        self._frag = None
        amap = self.amap
        end = start + n
        while start < end:
            k = start >> 10
            lo = start & 1023
            hi = min(end - (k << 10), BLOCK_BITS)
            x = amap[k] & ~(((1 << (hi - lo)) - 1) << lo)
            amap[k] = x
            self.full_mask &= ~(1 << k)
            if not x:
                self.empty_mask |= 1 << k
            start = (k << 10) + hi

    def _bound_alloc(self, off: int, bits: int) -> None:
        """bound_map: 1 at the first bit and just past the end, 0 strictly inside."""
        self._frag = None
        bmap = self.bmap
        start = off + 1
        end = off + bits
        while start < end:
            k = start >> 10
            lo = start & 1023
            hi = min(end - (k << 10), BLOCK_BITS)
            bmap[k] &= ~(((1 << (hi - lo)) - 1) << lo)
            start = (k << 10) + hi
        bmap[off >> 10] |= 1 << (off & 1023)
        bmap[end >> 10] |= 1 << (end & 1023)

    # ---- empty-page accounting ----------------------------------------------------

    def update_empty_pages(self, n: int) -> None:
        """pcpu_update_empty_pages(): the reserved and isolated chunks are not global."""
        self.nr_empty_pop_pages += n
        if not self.is_reserved and not self.isolated:
            self.counters.nr_empty_pop_pages += n

    def chunk_populated(self, s: int, e: int) -> None:
        """pcpu_chunk_populated(): pages [s, e) are backed and counted as empty."""
        self.populated |= ((1 << (e - s)) - 1) << s
        self.nr_populated += e - s
        self.counters.nr_populated += e - s
        self.update_empty_pages(e - s)

    def chunk_depopulated(self, s: int, e: int) -> None:
        """pcpu_chunk_depopulated(): pages [s, e) lose their backing."""
        self.populated &= ~(((1 << (e - s)) - 1) << s)
        self.nr_populated -= e - s
        self.counters.nr_populated -= e - s
        self.update_empty_pages(-(e - s))

    def page_runs(self, populated: bool, s: int = 0, e: int | None = None) -> list[tuple[int, int]]:
        """Maximal runs [rs, re) of (un)populated pages within [s, e), ascending."""
        if e is None:
            e = self.nr_pages
        p = self.populated if populated else ~self.populated
        p = (p >> s) & ((1 << (e - s)) - 1)
        runs: list[tuple[int, int]] = []
        base = s
        while p:
            lo = _ffs(p)
            t = p >> lo
            n = (t ^ (t + 1)).bit_length() - 1  # trailing ones
            runs.append((base + lo, base + lo + n))
            p = t >> n
            base += lo + n
        return runs

    # ---- block / chunk hint upkeep ------------------------------------------------

    def slot(self, free_slot: int, unit_size: int) -> int:
        """pcpu_chunk_slot()."""
        ch = self.chunk_md.contig_hint
        if self.free_bytes < MIN_ALLOC_SIZE or ch == 0:
            return 0
        size = ch * MIN_ALLOC_SIZE
        if size == unit_size:
            return free_slot
        slot = size.bit_length() - 3  # __pcpu_size_to_slot(), inlined
        return slot if slot > 1 else 1

    def block_refresh_hint(self, k: int) -> None:
        """pcpu_block_refresh_hint(): rescan block k after the promoted scan hint."""
        b = self.md_blocks[k]
        if b.scan_hint:
            start = b.scan_hint_start + b.scan_hint
            b.contig_hint_start = b.scan_hint_start
            b.contig_hint = b.scan_hint
            b.scan_hint = 0
        else:
            start = b.first_free
            b.contig_hint = 0  # contig_hint_start left stale on purpose
        b.right_free = 0
        f = ((~self.amap[k] & _FULL) >> start) << start  # free bits at or after start
        while f:
            rs = (f & -f).bit_length() - 1
            t = f >> rs
            re = rs + (t ^ (t + 1)).bit_length() - 1
            block_update(b, rs, re)
            f = (f >> re) << re

    def chunk_refresh_hint(self, full_scan: bool) -> None:
        """pcpu_chunk_refresh_hint(): rebuild chunk_md from the block hints.

        One pass over the blocks that makes exactly the block_update() calls of the
        kernel's pcpu_for_each_md_free_region() loop: per block, its contig-hint run if
        interior and not yet passed, then the run touching its end, merged across
        entirely free blocks (skipped in one step: left_free == 1024 there).
        """
        m = self.chunk_md
        if not full_scan and m.scan_hint:
            off = m.scan_hint_start + m.scan_hint
            m.contig_hint_start = m.scan_hint_start
            m.contig_hint = m.scan_hint
            m.scan_hint = 0
        else:
            off = m.first_free
            m.contig_hint = 0  # scan_hint is NOT cleared on a full scan
        md = self.md_blocks
        nb = self.nr_pages
        map_bits = self.map_bits
        full = self.full_mask
        nfull = ~full
        nempty = ~self.empty_mask
        i = off >> 10
        block_off = off & 1023
        while i < nb:
            if full >> i & 1:  # contig 0, right_free 0: contributes nothing
                f = nfull >> (i + 1)
                i += (f & -f).bit_length()
                block_off = 0
                continue
            b = md[i]
            ch = b.contig_hint
            chs = b.contig_hint_start
            if ch and chs >= block_off and ch + chs < BLOCK_BITS:
                o = (i << 10) + chs
                n = ch
            else:
                n = b.right_free
                i += 1
                block_off = 0
                if not n:
                    continue
                # a run touching the block end, carried over entirely free blocks
                o = (i << 10) - n
                if i < nb:
                    f = nempty >> i
                    j = i + (f & -f).bit_length() - 1  # first block that is not empty
                    if j > nb:
                        j = nb
                    n += (j - i) << 10
                    if j < nb:
                        n += md[j].left_free
            # skip calls that provably change nothing: a shorter run after the
            # current contig start, not at either end and not before first_free
            if (
                n >= m.contig_hint
                or o < m.contig_hint_start
                or o < m.first_free
                or not o
                or o + n == map_bits
            ):
                block_update(m, o, o + n)
            nxt = o + n + 1
            i = nxt >> 10
            block_off = nxt & 1023

    def hint_alloc(self, bit_off: int, bits: int) -> None:
        """pcpu_block_update_hint_alloc(): after setting [bit_off, bit_off+bits)."""
        md = self.md_blocks
        amap = self.amap
        last = bit_off + bits - 1
        s_idx = bit_off >> 10
        e_idx = last >> 10
        s_off = bit_off & 1023
        e_off = (last & 1023) + 1
        sb = md[s_idx]
        nr_empty = 0
        # counts every previously free block, populated or not, as the kernel does
        if sb.contig_hint == BLOCK_BITS:
            nr_empty += 1
        s_end = s_off + bits
        if s_off == sb.first_free:
            if s_end < BLOCK_BITS:  # find_next_zero_bit(), inlined
                f = ~amap[s_idx] >> s_end
                sb.first_free = s_end + (f & -f).bit_length() - 1
            else:
                sb.first_free = BLOCK_BITS
        # pcpu_region_overlap(), inlined; an empty [a, a) overlaps [x, y) when x < a < y
        if sb.scan_hint_start < s_end and s_off < sb.scan_hint_start + sb.scan_hint:
            sb.scan_hint = 0
        if sb.contig_hint_start < s_end and s_off < sb.contig_hint_start + sb.contig_hint:
            if not s_off:
                sb.left_free = 0
            self.block_refresh_hint(s_idx)
        else:
            if s_off < sb.left_free:
                sb.left_free = s_off
            if s_idx == e_idx:
                sb.right_free = min(sb.right_free, BLOCK_BITS - e_off)
            else:
                sb.right_free = 0

        if s_idx != e_idx:
            eb = md[e_idx]
            if eb.contig_hint == BLOCK_BITS:
                nr_empty += 1
            eb.first_free = _next_zero_in_block(amap[e_idx], e_off)
            mid_end = e_idx
            if e_off == BLOCK_BITS:
                mid_end = e_idx + 1  # eb fully covered: reset like a middle block
            else:
                if e_off > eb.scan_hint_start:
                    eb.scan_hint = 0
                eb.left_free = 0
                if e_off > eb.contig_hint_start:
                    self.block_refresh_hint(e_idx)
                else:
                    eb.right_free = min(eb.right_free, BLOCK_BITS - e_off)
            nr_empty += e_idx - s_idx - 1
            for k in range(s_idx + 1, mid_end):
                b = md[k]
                b.scan_hint = b.contig_hint = 0
                b.left_free = b.right_free = 0

        if nr_empty:
            self.update_empty_pages(-nr_empty)

        m = self.chunk_md
        end = bit_off + bits
        if m.scan_hint_start < end and bit_off < m.scan_hint_start + m.scan_hint:
            m.scan_hint = 0
        if m.contig_hint_start < end and bit_off < m.contig_hint_start + m.contig_hint:
            self.chunk_refresh_hint(False)

    def hint_free(self, bit_off: int, bits: int) -> None:
        """pcpu_block_update_hint_free(): after clearing [bit_off, bit_off+bits)."""
        md = self.md_blocks
        amap = self.amap
        last = bit_off + bits - 1
        s_idx = bit_off >> 10
        e_idx = last >> 10
        s_off = bit_off & 1023
        e_off = (last & 1023) + 1
        sb = md[s_idx]
        eb = md[e_idx]
        nr_empty = 0
        if s_off == sb.contig_hint + sb.contig_hint_start:
            start = sb.contig_hint_start
        else:
            # find_last_bit() below s_off, inlined: 0 when nothing is set there
            start = (amap[s_idx] & ((1 << s_off) - 1)).bit_length()
        if e_off == eb.contig_hint_start:
            end = eb.contig_hint_start + eb.contig_hint
        else:
            f = amap[e_idx] >> e_off  # find_next_bit(), inlined
            end = e_off + (f & -f).bit_length() - 1 if f else BLOCK_BITS
        sb_end = end if s_idx == e_idx else BLOCK_BITS
        if not start and sb_end == BLOCK_BITS:
            nr_empty += 1
        block_update(sb, start, sb_end)
        if s_idx != e_idx:
            if end == BLOCK_BITS:
                nr_empty += 1
            block_update(eb, 0, end)
            nr_empty += e_idx - s_idx - 1
            for k in range(s_idx + 1, e_idx):
                b = md[k]  # scan_hint_start is left stale, as in the kernel
                b.first_free = 0
                b.scan_hint = 0
                b.contig_hint_start = 0
                b.contig_hint = BLOCK_BITS
                b.left_free = BLOCK_BITS
                b.right_free = BLOCK_BITS
        if nr_empty:
            self.update_empty_pages(nr_empty)
        if end - start >= BLOCK_BITS or s_idx != e_idx:
            self.chunk_refresh_hint(True)
        else:
            # Kernel quirk, kept: the chunk-relative start goes with a block-relative end.
            block_update(self.chunk_md, (s_idx << 10) + start, end)

    # ---- searching: pcpu_find_block_fit(), pcpu_alloc_area() ----------------------

    def _next_fit_region(self, alloc_bits: int, align: int, bit_off: int) -> tuple[int, int]:
        """pcpu_next_fit_region()."""
        md = self.md_blocks
        nb = self.nr_pages
        i = bit_off >> 10
        block_off = bit_off & 1023
        bits = 0
        amask = -align
        full = self.full_mask
        while i < nb:
            b = md[i]
            if bits:  # run carried from the previous block's end
                bits += b.left_free
                if bits >= alloc_bits:
                    return bit_off, bits
                if b.left_free == BLOCK_BITS:
                    i += 1
                    continue
            elif full >> i & 1:  # a full block neither fits nor starts a carry
                i += 1 + _ffs(~full >> (i + 1))
                block_off = 0
                continue
            chs = b.contig_hint_start
            pad = ((chs + align - 1) & amask) - chs
            if b.contig_hint and chs >= block_off and b.contig_hint >= pad + alloc_bits:
                st = _next_hint(b, alloc_bits)
                return (i << 10) + st, pad + alloc_bits + chs - st
            block_off = 0
            o = (BLOCK_BITS - b.right_free + align - 1) & amask
            bits = BLOCK_BITS - o
            bit_off = (i << 10) + o
            if bits >= alloc_bits:
                return bit_off, bits
            i += 1
        return self.map_bits, bits

    def _is_populated(self, bit_off: int, bits: int) -> int:
        """pcpu_is_populated(): -1 when populated, else the next bit offset to try."""
        p0 = bit_off >> 10
        p1 = (bit_off + bits + 1023) >> 10
        hole = ~self.populated >> p0 & ((1 << (p1 - p0)) - 1)
        if not hole:
            return -1
        z = p0 + _ffs(hole)
        rest = self.populated >> (z + 1) & ((1 << max(p1 - z - 1, 0)) - 1)
        e = z + 1 + _ffs(rest) if rest else p1
        return e << 10

    def find_block_fit(self, alloc_bits: int, align: int, pop_only: bool) -> int:
        """pcpu_find_block_fit(): a bit offset to start alloc_area from, or -1."""
        m = self.chunk_md
        chs = m.contig_hint_start
        # trusts the (possibly stale) chunk hint
        if ((chs + align - 1) & -align) - chs + alloc_bits > m.contig_hint:
            return -1
        map_bits = self.map_bits
        off, bits = self._next_fit_region(alloc_bits, align, _next_hint(m, alloc_bits))
        while off < map_bits:
            if not pop_only:
                break
            nxt = self._is_populated(off, bits)
            if nxt < 0:
                break
            off, bits = self._next_fit_region(alloc_bits, align, nxt)
        return -1 if off >= map_bits else off

    def _block_update_scan(self, area_off: int, area_bits: int) -> None:
        """pcpu_block_update_scan(): record the largest run the first fit skipped."""
        s_off = area_off & 1023
        e_off = s_off + area_bits
        if e_off > BLOCK_BITS:
            return
        k = area_off >> 10
        lb = _last_set_in_block(self.amap[k], s_off)
        s_off = 0 if lb == s_off else lb + 1  # extend left over alignment padding
        block_update(self.md_blocks[k], s_off, e_off)

    def alloc_area(self, alloc_bits: int, align: int, start: int, *, dry_run: bool = False) -> int:
        """pcpu_alloc_area() minus the relocate: byte offset, or -1 with no side effect.

        ``dry_run`` only searches: the offset it would take, nothing changed."""
        end = start + alloc_bits + BLOCK_BITS  # bounded search window
        if end > self.map_bits:
            end = self.map_bits
        amap = self.amap
        k0 = start >> 10
        base = k0 << 10
        # the window [base, end) as one int; bits past ``end`` can only push a
        # candidate past the window, where it fails anyway
        w = amap[k0]
        for k in range(k0 + 1, ((end - 1) >> 10) + 1):
            w |= amap[k] << ((k - k0) << 10)
        size = end - base
        nw = ~w
        mask = align - 1
        nmask = ~mask
        run_mask = (1 << alloc_bits) - 1
        s = start - base
        largest_off = largest_bits = 0
        # pcpu_find_zero_area(): first fit, remembering the largest run skipped
        while True:
            if s >= size:
                return -1
            f = nw >> s
            idx = (s + (f & -f).bit_length() - 1 + mask) & nmask
            if idx + alloc_bits > size:
                return -1
            hit = (w >> idx) & run_mask
            if not hit:
                break
            run = (hit & -hit).bit_length() - 1
            if run >= largest_bits and run:
                a_idx = base + idx
                if run > largest_bits or (
                    largest_off and (not a_idx or (a_idx & -a_idx) > (largest_off & -largest_off))
                ):
                    largest_off = a_idx
                    largest_bits = run
            s = idx + run + 1
        off = base + idx
        if dry_run:
            return off * MIN_ALLOC_SIZE
        self._frag = None  # amap and bmap change below
        if largest_bits:
            self._block_update_scan(largest_off, largest_bits)
        e = off + alloc_bits
        k = off >> 10
        lo = off & 1023
        if (e - 1) >> 10 == k:  # one block: the common case, inlined
            x = amap[k] | (run_mask << lo)
            amap[k] = x
            self.empty_mask &= ~(1 << k)
            if x == _FULL:
                self.full_mask |= 1 << k
            bmap = self.bmap
            bmap[k] = (bmap[k] & ~((run_mask >> 1) << (lo + 1))) | (1 << lo)
            bmap[e >> 10] |= 1 << (e & 1023)
        else:
            self._amap_set(off, alloc_bits)
            self._bound_alloc(off, alloc_bits)
        self.free_bytes -= alloc_bits * MIN_ALLOC_SIZE
        m = self.chunk_md
        if off == m.first_free:
            m.first_free = self._next_zero(e, self.map_bits)
        self.hint_alloc(off, alloc_bits)
        return off * MIN_ALLOC_SIZE

    def free_area(self, byte_off: int) -> int:
        """pcpu_free_area() minus stats and relocate: returns the freed bytes."""
        b0 = byte_off >> 2
        self._frag = None
        # the size comes only from the boundary map, as in the kernel
        b1 = self._next_set(self.bmap, b0 + 1, self.map_bits)
        self._amap_clear(b0, b1 - b0)
        self.free_bytes += (b1 - b0) * MIN_ALLOC_SIZE
        m = self.chunk_md
        if b0 < m.first_free:
            m.first_free = b0
        self.hint_free(b0, b1 - b0)
        return (b1 - b0) * MIN_ALLOC_SIZE

    def is_free(self, bit_off: int, bits: int) -> bool:
        """No bit of [bit_off, bit_off + bits) is allocated (and the range is in the map)."""
        if bit_off < 0 or bits <= 0 or bit_off + bits > self.map_bits:
            return False
        return self._next_set(self.amap, bit_off, bit_off + bits) == bit_off + bits

    def place(self, bit_off: int, bits: int) -> None:
        """pcpu_alloc_area() after its search, at an offset chosen elsewhere (a known state,
        or the kernel's choice in a recording): maps, free bytes, first_free, hints."""
        self._frag = None
        self._amap_set(bit_off, bits)
        self._bound_alloc(bit_off, bits)
        self.free_bytes -= bits * MIN_ALLOC_SIZE
        m = self.chunk_md
        if bit_off == m.first_free:
            m.first_free = self._next_zero(bit_off + bits, self.map_bits)
        self.hint_alloc(bit_off, bits)

    def largest_free_run(self) -> int:
        """The longest run of free bits, from the bitmap itself (hints may be stale)."""
        best = run = 0
        for x in self.amap:
            z = ~x & _FULL
            pos = 0
            while z:  # each run of free bits in the block, ascending
                lo = _ffs(z)
                t = z >> lo
                n = (t ^ (t + 1)).bit_length() - 1
                if pos + lo:  # an allocated bit ends the run carried so far
                    best = max(best, run)
                    run = 0
                run += n
                pos += lo + n
                z = t >> n
            if pos < BLOCK_BITS:  # the block ends allocated
                best = max(best, run)
                run = 0
        return max(best, run)

    def page_fill(self) -> list[int]:
        """Allocated bits in each page (= block), hidden boot areas included."""
        return [x.bit_count() for x in self.amap]

    def hide(self, start: int, n: int, bounds: tuple[int, int]) -> None:
        """pcpu_alloc_first_chunk(): mark [start, start+n) allocated, hiding it."""
        self._frag = None
        self._amap_set(start, n)
        for bit in bounds:
            self.bmap[bit >> 10] |= 1 << (bit & 1023)
        if start == 0:
            self.chunk_md.first_free = n
        self.hint_alloc(start, n)

    # ---- percpu_stats fragment walk (mm/percpu-stats.c) ---------------------------

    def frag_stats(self) -> tuple[int, int, int, int, int]:
        """chunk_map_stats(): (sum_frag, max_frag, cur_min, cur_med, cur_max).

        Memoized: the walk costs milliseconds on a fragmented 1 MiB chunk and every
        snapshot renders every chunk. The memo is dropped by every amap/bmap writer
        and keyed on the offsets (plain attributes the boot code assigns).
        """
        memo = self._frag
        if memo is not None and memo[0] == self.start_offset and memo[1] == self.end_offset:
            return memo[2]
        result = self._frag_stats()
        self._frag = (self.start_offset, self.end_offset, result)
        return result

    def _frag_stats(self) -> tuple[int, int, int, int, int]:
        """frag_stats() computed from the bitmaps, bypassing the memo."""
        limit = self.map_bits - self.end_offset // MIN_ALLOC_SIZE - 1  # the kernel's extra -1
        la = self._last_set(limit)
        last_alloc = la + 1 if self.test_alloc_bit(la) else 0
        pieces: list[int] = []
        s = self.start_offset // MIN_ALLOC_SIZE
        while s < last_alloc:
            if self.test_alloc_bit(s):
                e = self._next_set(self.bmap, s + 1, last_alloc)
                pieces.append((e - s) * MIN_ALLOC_SIZE)
            else:
                e = self._next_set(self.amap, s + 1, last_alloc)
                pieces.append(-(e - s) * MIN_ALLOC_SIZE)
            s = e
        if not pieces:
            return 0, 0, 0, 0, 0
        pieces.sort()
        neg = [p for p in pieces if p < 0]
        i = len(neg)
        return (
            -sum(neg),
            max((-p for p in neg), default=0),
            pieces[i],
            pieces[(i + len(pieces) - 1) // 2],
            pieces[-1],
        )
