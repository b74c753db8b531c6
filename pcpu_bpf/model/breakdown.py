"""Where meminfo's Percpu goes: the breakdown into parts that add up to it.

The arithmetic follows mm/percpu.c. meminfo's Percpu is pcpu_nr_pages(): populated pages
per unit (pcpu_nr_populated) x units x PAGE_SIZE. Every unit holds the same layout, so each
part is a per-unit byte count times the number of units:

- the first chunk's region is fully populated at boot and holds the static area
  (``static_size``), the reserved area (``reserved_size``, served by the reserved chunk)
  and the first dynamic area;
- every other populated byte belongs to a dynamic chunk;
- an allocation takes its size (already rounded by the allocator to 4 bytes) in every
  unit, so the live dynamic bytes per unit are, per non-reserved chunk, its capacity
  minus percpu_stats' ``free_bytes``;
- a populated page with no allocation in it is counted per chunk as ``empty_pop_pages``.

Measured: static, reserved, traced_live (our tables), profiler (the profiler's own maps),
empty_pages (percpu_stats). Derived as a remainder: untraced_live (the kernel's live bytes
minus what tracing explains) and free_in_used_pages (populated dynamic bytes minus live
bytes and empty pages); each is checked against its bounds, and a violation is reported,
never clipped. What cannot be placed without percpu_stats is ``unexplained``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pcpu_bpf.model.kernel_stats import CHUNK_FIRST, CHUNK_RESERVED, PercpuStats

PAGE_SIZE = 4096
MIN_ALLOC_SIZE = 4  # PCPU_MIN_ALLOC_SIZE: the allocator's unit

# Every part, in the order a reader meets them; they add up to meminfo's Percpu.
PARTS: tuple[str, ...] = (
    "static",
    "reserved",
    "traced_live",
    "untraced_live",
    "profiler",
    "empty_pages",
    "free_in_used_pages",
    "unexplained",
)
# Parts that need debugfs percpu_stats; absent (not guessed) where the kernel lacks it.
NEEDS_PERCPU_STATS: tuple[str, ...] = (
    "static",
    "reserved",
    "untraced_live",
    "empty_pages",
    "free_in_used_pages",
)


# What a violated bound is counted under (pcpu_memory_bound_violations_total{part}): the
# derived parts, and "units", meminfo not being whole pages of nr_units units (the units
# assumption broke). A violation's text starts with one of these and a colon.
BOUND_SUBJECTS: tuple[str, ...] = (
    "untraced_live",
    "empty_pages",
    "free_in_used_pages",
    "unexplained",
    "units",
)


def violation_subject(violation: str) -> str:
    """The part (or "units") a violation text is about."""
    return violation.split(":", 1)[0]


def nr_units(stats: PercpuStats | None, possible_cpus: int) -> int:
    """Units per chunk, pcpu_nr_units: the possible CPUs rounded up to whole allocations
    of alloc_size / unit_size units (pcpu_build_alloc_info), assuming one allocation
    group (one NUMA node's worth); the possible CPUs where percpu_stats is missing."""
    if stats is None or stats.info.unit_size <= 0:
        return possible_cpus
    per_allocation = max(stats.info.alloc_size // stats.info.unit_size, 1)
    return -(-possible_cpus // per_allocation) * per_allocation


def _frozen(mapping: Mapping[str, int] | None = None) -> Mapping[str, int]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class Breakdown:
    """meminfo's Percpu in parts (bytes, all units), and which bounds the inputs broke."""

    parts: Mapping[str, int] = field(default_factory=_frozen)
    # Bounds a derived part broke on this occasion: "part: why". Counted and logged by the
    # exporter; the parts are not clipped, so they still add up.
    violations: tuple[str, ...] = ()
    # False when percpu events came in while the kernel's figures and the traced ones
    # were read (a busy host): the parts then mix two moments and are not exact.
    settled: bool = True

    def __post_init__(self) -> None:
        # The parts in PARTS order whatever order they came in (an exposition is sorted by
        # label value); a part this version does not know goes last.
        known = [p for p in PARTS if p in self.parts]
        rest = sorted(p for p in self.parts if p not in PARTS)
        object.__setattr__(self, "parts", _frozen({p: self.parts[p] for p in known + rest}))

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def explained_share(self) -> float:
        """The share of the total that is placed in a part other than ``unexplained``."""
        total = self.total
        return 1.0 - self.parts.get("unexplained", 0) / total if total else 0.0


@dataclass(frozen=True, slots=True)
class BreakdownInputs:
    """What the arithmetic needs, each from where it is measured."""

    meminfo_bytes: int  # /proc/meminfo Percpu
    nr_units: int  # units per chunk (possible CPUs, rounded up per allocation group)
    traced_live_per_unit: int  # sum of live traced request sizes outside the reserved chunk
    profiler_bytes: int | None = None  # the profiler's own percpu bytes, all units
    percpu_stats: PercpuStats | None = None


def first_chunk_capacity(stats: PercpuStats) -> int:
    """Bytes per unit the first chunk can hand out: its dynamic area after the static
    area's end is aligned to the allocator's unit (pcpu_alloc_first_chunk's map_size)."""
    info = stats.info
    aligned_static = -(-info.static_size // MIN_ALLOC_SIZE) * MIN_ALLOC_SIZE
    return info.dyn_size - (aligned_static - info.static_size)


def kernel_live_per_unit(stats: PercpuStats) -> int:
    """Bytes per unit held by live dynamic allocations, as the kernel's chunks count them."""
    total = 0
    for chunk in stats.chunks:
        if chunk.kind == CHUNK_RESERVED:
            continue
        capacity = (
            first_chunk_capacity(stats) if chunk.kind == CHUNK_FIRST else stats.info.unit_size
        )
        total += capacity - chunk.free_bytes
    return total


def breakdown(inputs: BreakdownInputs) -> Breakdown:
    """Split meminfo's Percpu into PARTS; the parts always add up to it."""
    u = inputs.nr_units
    parts: dict[str, int] = {"traced_live": inputs.traced_live_per_unit * u}
    if inputs.profiler_bytes is not None:
        parts["profiler"] = inputs.profiler_bytes
    violations: list[str] = []
    stats = inputs.percpu_stats
    if stats is None or not stats.chunks:
        placed = sum(parts.values())
        parts["unexplained"] = inputs.meminfo_bytes - placed
        if parts["unexplained"] < 0:
            violations.append("unexplained: traced and profiler bytes exceed meminfo")
        return Breakdown(_ordered(parts), tuple(violations))
    info = stats.info
    non_reserved = [c for c in stats.chunks if c.kind != CHUNK_RESERVED]
    live = kernel_live_per_unit(stats) * u
    free = sum(c.free_bytes for c in non_reserved) * u
    parts["static"] = info.static_size * u
    parts["reserved"] = info.reserved_size * u
    parts["untraced_live"] = live - parts["traced_live"] - parts.get("profiler", 0)
    parts["empty_pages"] = sum(c.empty_pop_pages for c in non_reserved) * PAGE_SIZE * u
    populated_dynamic = inputs.meminfo_bytes - parts["static"] - parts["reserved"]
    parts["free_in_used_pages"] = populated_dynamic - live - parts["empty_pages"]
    parts["unexplained"] = 0
    if inputs.meminfo_bytes % (PAGE_SIZE * u):
        violations.append(f"units: meminfo {inputs.meminfo_bytes} is not whole pages of {u} units")
    if parts["untraced_live"] < 0:
        violations.append("untraced_live: traced bytes exceed the kernel's live bytes")
    if parts["empty_pages"] < 0:
        violations.append("empty_pages: percpu_stats counts fewer than no empty pages")
    if parts["free_in_used_pages"] < 0:
        violations.append("free_in_used_pages: live bytes and empty pages exceed the populated")
    if parts["free_in_used_pages"] + parts["empty_pages"] > free:
        violations.append("free_in_used_pages: more free bytes than percpu_stats' free_bytes")
    return Breakdown(_ordered(parts), tuple(violations))


def _ordered(parts: dict[str, int]) -> Mapping[str, int]:
    return _frozen({p: parts[p] for p in PARTS if p in parts})
