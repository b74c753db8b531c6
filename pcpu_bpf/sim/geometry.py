"""Machine geometry for the allocator simulator (struct pcpu_alloc_info and the CPUs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
