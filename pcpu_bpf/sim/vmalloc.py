"""The vmalloc space dynamic chunks live in: pcpu_get_vm_areas() and lazy freeing (mm/vmalloc.c).

A chunk's vm area is ``nr_units * unit_size`` bytes with no guard page. pcpu_get_vm_areas()
places it as high as it fits: it walks the free areas from the top down and takes the
first whose end, rounded down to the atom size, leaves room below it
(pvm_determine_end_from_reverse()). So new areas stack down back to back from
VMALLOC_END. A freed area is not free at once: free_vmap_area_noflush() puts it on the
lazy list, and it returns to the free areas only when the lazy areas are purged, which
the kernel does once they exceed lazy_max_pages() (or when a search overflows).
"""

from __future__ import annotations

import bisect

PAGE_SIZE = 4096
# x86-64, 4-level paging, no KASLR of the vmalloc base: VMALLOC_START and VMALLOC_END
# (inclusive, as the kernel's free area ends).
VMALLOC_START = 0xFFFFC90000000000
VMALLOC_END = 0xFFFFE8FFFFFFFFFF
LAZY_PAGES_PER_LOG_CPU = (32 << 20) // PAGE_SIZE


def lazy_max_pages(nr_cpus: int) -> int:
    """lazy_max_pages(): 32 MiB of lazily freed areas per bit of the online CPU count."""
    return nr_cpus.bit_length() * LAZY_PAGES_PER_LOG_CPU


class VmSpace:
    """The free and lazily freed areas of the vmalloc range, as percpu sees them."""

    def __init__(
        self,
        *,
        nr_cpus: int,
        vmalloc_start: int = VMALLOC_START,
        vmalloc_end: int = VMALLOC_END,
    ) -> None:
        self.vmalloc_start = vmalloc_start
        self.vmalloc_end = vmalloc_end
        # disjoint, ascending [start, end) free areas, adjacent ones merged
        self._free: list[tuple[int, int]] = [(vmalloc_start, vmalloc_end)]
        self._lazy: list[tuple[int, int]] = []
        self.lazy_pages = 0
        self.lazy_max_pages = lazy_max_pages(nr_cpus)

    @property
    def free_areas(self) -> tuple[tuple[int, int], ...]:
        """The free areas, ascending (for tests)."""
        return tuple(self._free)

    def get_area(self, size: int, align: int) -> int | None:
        """pcpu_get_vm_areas() for one group: the highest base that fits, or None."""
        base = self._find(size, align)
        if base is None and self._lazy:
            self.purge()  # the kernel purges the lazy areas once, then retries
            base = self._find(size, align)
        if base is not None:
            self.reserve(base, size)
        return base

    def peek(self, size: int, align: int) -> int | None:
        """Where get_area() would put an area now, before any purge; nothing changes."""
        return self._find(size, align)

    def _find(self, size: int, align: int) -> int | None:
        top = self.vmalloc_end & ~(align - 1)
        low = -(-self.vmalloc_start // align) * align
        for start, end in reversed(self._free):
            addr = min(end & ~(align - 1), top)
            if start < addr and addr - size >= max(start, low):
                return addr - size
        return None

    def take(self, base: int, size: int) -> None:
        """Take [base, base + size), purging the lazy areas first if it is not free yet."""
        if not self.is_free(base, size):
            self.purge()
        self.reserve(base, size)

    def is_free(self, base: int, size: int) -> bool:
        """[base, base + size) lies inside one free area."""
        i = bisect.bisect_right(self._free, (base, 1 << 64)) - 1
        return i >= 0 and self._free[i][0] <= base and base + size <= self._free[i][1]

    def reserve(self, base: int, size: int) -> None:
        """Take [base, base + size) out of the free areas (it must be free)."""
        if not self.is_free(base, size):
            raise ValueError(f"vm area {base:#x}+{size:#x} is not free")
        end = base + size
        i = bisect.bisect_right(self._free, (base, 1 << 64)) - 1
        start, stop = self._free.pop(i)
        pieces = [(a, b) for a, b in ((start, base), (end, stop)) if a < b]
        self._free[i:i] = pieces

    def free_area(self, base: int, size: int) -> None:
        """free_vmap_area_noflush(): the area is lazy; past lazy_max_pages, purge."""
        self._lazy.append((base, base + size))
        self.lazy_pages += size // PAGE_SIZE
        if self.lazy_pages > self.lazy_max_pages:
            self.purge()

    def purge(self) -> None:
        """__purge_vmap_area_lazy(): every lazy area becomes free again."""
        for start, end in self._lazy:
            self._release(start, end)
        self._lazy.clear()
        self.lazy_pages = 0

    def _release(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._free, (start, end))
        if i > 0 and self._free[i - 1][1] == start:
            i -= 1
            start = self._free.pop(i)[0]
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free.pop(i)[1]
        self._free.insert(i, (start, end))
