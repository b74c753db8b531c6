"""Machine geometry for the allocator simulator (struct pcpu_alloc_info and the CPUs)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.model.kernel_stats import AllocationInfo

PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Geometry:
    """The boot-time numbers the allocator's behaviour depends on.

    The default is this project's reference machine: a 6.18 kernel with 2 possible CPUs,
    1 MiB units, no reserved chunk (no modules), memcg kmem accounting on.
    """

    nr_possible_cpus: int = 2
    nr_units: int = 2
    unit_size: int = 1 << 20
    static_size: int = 185560
    reserved_size: int = 0
    dyn_size: int = 31528
    atom_size: int = 2 << 20
    alloc_size: int = 2 << 20
    memcg_kmem: bool = True

    @property
    def unit_pages(self) -> int:
        return self.unit_size // PAGE_SIZE

    @classmethod
    def from_info(
        cls, info: AllocationInfo, *, nr_possible_cpus: int, nr_units: int, memcg_kmem: bool
    ) -> Geometry:
        """The geometry whose six pcpu_alloc_info sizes are percpu_stats' "Allocation Info"."""
        return cls(
            nr_possible_cpus=nr_possible_cpus,
            nr_units=nr_units,
            memcg_kmem=memcg_kmem,
            **asdict(info),
        )

    def allocation_info(self) -> AllocationInfo:
        """The "Allocation Info" block percpu_stats prints for this geometry."""
        return AllocationInfo(
            **{name: getattr(self, name) for name in AllocationInfo.__dataclass_fields__}
        )

    def with_cpus(self, cpus: int) -> Geometry:
        """The same machine with ``cpus`` possible CPUs: units come alloc_size at a time."""
        per_alloc = max(self.alloc_size // self.unit_size, 1)
        return replace(self, nr_possible_cpus=cpus, nr_units=-(-cpus // per_alloc) * per_alloc)

    def check(self) -> Geometry:
        """This geometry, or a ScenarioError naming what no kernel would boot with."""
        page = PAGE_SIZE
        problems = [
            (self.nr_possible_cpus < 1, "nr_possible_cpus must be at least 1"),
            (self.nr_units < self.nr_possible_cpus, "nr_units must cover every possible CPU"),
            (
                self.unit_size < 32 << 10 or self.unit_size % page,
                "unit_size must be a multiple of 4 KiB, at least 32 KiB",
            ),
            (
                self.atom_size < page or self.atom_size & (self.atom_size - 1),
                "atom_size must be a power of two, at least 4 KiB",
            ),
            (self.alloc_size < self.unit_size, "alloc_size must be at least unit_size"),
            (self.dyn_size < 1, "dyn_size must be positive"),
            (
                self.static_size + self.reserved_size + self.dyn_size > self.unit_size,
                "static, reserved and dynamic sizes must fit in unit_size",
            ),
        ]
        for bad, why in problems:
            if bad:
                raise ScenarioError(f"impossible geometry: {why}")
        return self

    def changed(self, spec: str) -> Geometry:
        """This geometry with ``field=value,...`` applied (sizes take K, M or G; ``cpus=N``
        sets the CPUs and their units). A unit_size above alloc_size raises alloc_size with
        it, to the next multiple of atom_size, unless alloc_size is given too."""
        g = self
        given: set[str] = set()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise ScenarioError(f"bad geometry change {part!r}: use field=value")
            if name == "cpus":
                g = g.with_cpus(_size(value, name))
            elif name == "memcg_kmem":
                if value not in ("on", "off", "true", "false", "1", "0"):
                    raise ScenarioError(f"memcg_kmem={value!r}: use on or off")
                g = replace(g, memcg_kmem=value in ("on", "true", "1"))
            elif name in _INT_FIELDS:
                change: dict[str, Any] = {name: _size(value, name)}
                g = replace(g, **change)
                given.add(name)
            else:
                known = ", ".join(("cpus", *_INT_FIELDS, "memcg_kmem"))
                raise ScenarioError(f"unknown geometry field {name!r}; known: {known}")
        if "alloc_size" not in given and g.alloc_size < g.unit_size and g.atom_size > 0:
            g = replace(g, alloc_size=-(-g.unit_size // g.atom_size) * g.atom_size)
        return g.check()

    def bytes_alloc(self, size: int) -> int:
        """pcpu_obj_full_size(): the bytes_alloc the alloc tracepoint reports."""
        extra = (size // 4) * 8 if self.memcg_kmem else 0
        return size * self.nr_possible_cpus + extra


CONFIG_L = Geometry()
"""The reference 2-CPU machine: 1 MiB units, no reserved chunk, memcg kmem on (6.18)."""

CONFIG_S = Geometry(
    nr_possible_cpus=4,
    nr_units=4,
    unit_size=64 << 10,
    static_size=40000,
    reserved_size=4096,
    dyn_size=21440,
    atom_size=4096,
    alloc_size=65536,
    memcg_kmem=True,
)
"""A small 4-CPU machine, 64 KiB units and a 4 KiB reserved chunk: chunks fill fast."""


_INT_FIELDS = tuple(f.name for f in fields(Geometry) if f.name != "memcg_kmem")
_SIZE_RE = re.compile(r"(\d+)([KMG]?)(?:i?B)?", re.IGNORECASE)


def _size(text: str, name: str) -> int:
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ScenarioError(f"{name}={text!r}: not a number (sizes may end in K, M or G)")
    return int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]
