"""Reading a BPF ring buffer map from user space, through mmap, as libbpf does.

The map's fd maps as two parts (kernel/bpf/ringbuf.c): at offset 0 one page holding the
consumer position, which the reader writes; at one page, read-only, the producer page
and then the data area mapped twice in a row, so a record that wraps is contiguous. Each
record starts with an 8-byte header: its length with a busy bit (still being written)
and a discard bit, and the page offset the kernel uses. Positions only grow; a record's
place is position & (size - 1), and the next record is 8-byte aligned.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Callable

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def parse_records(
    data: memoryview | bytes, size: int, consumer: int, producer: int
) -> tuple[list[bytes], int]:
    """The committed records between ``consumer`` and ``producer`` in a data area of
    ``size`` bytes mapped twice (or copied so), and the new consumer position."""
    out: list[bytes] = []
    mask = size - 1
    while consumer < producer:
        at = consumer & mask
        (length,) = _U32.unpack_from(data, at)
        if length & BUSY_BIT:
            break  # not committed yet: everything after it waits too
        n = length & ~(BUSY_BIT | DISCARD_BIT)
        if not length & DISCARD_BIT:
            out.append(bytes(data[at + HEADER_SIZE : at + HEADER_SIZE + n]))
        consumer += (n + HEADER_SIZE + 7) & ~7
    return out, consumer


class RingBuffer:
    """The consumer side of one ring buffer map."""

    def __init__(self, map_fd: int, size: int) -> None:
        self.fd = map_fd
        self.size = size
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._producer)[page:]
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)

    def drain(self, handle: Callable[[bytes], None]) -> int:
        """Hand every committed record to ``handle``, then give their room back."""
        (consumer,) = _U64.unpack_from(self._consumer, 0)
        (producer,) = _U64.unpack_from(self._producer, 0)
        records, consumer = parse_records(self._data, self.size, consumer, producer)
        for record in records:
            handle(record)
        _U64.pack_into(self._consumer, 0, consumer)
        return len(records)

    def wait(self, timeout: float) -> None:
        """Until the kernel says records are there, or ``timeout`` seconds."""
        self._poll.poll(max(int(timeout * 1000), 0))

    def close(self) -> None:
        """Unmap; the map itself belongs to its fd's owner."""
        self._data.release()
        self._producer.close()
        self._consumer.close()
