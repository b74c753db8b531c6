"""The house's layout holds: imports point down the wings, never sideways, never in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each wing and its floor: a module may import from a lower floor or from its own wing.
FLOORS: dict[str, int] = {
    "pcpu_bpf": 0,  # the package face (__version__), errors.py, units.py
    "pcpu_bpf.model": 1,
    "pcpu_bpf.kernel": 2,
    "pcpu_bpf.bpf": 2,
    "pcpu_bpf.recording": 2,
    "exporters": 2,
    "pcpu_bpf.sim": 3,
    "pcpu_bpf.doctor": 3,
    "pcpu_bpf.backends": 4,
    "pcpu_bpf.daemon": 5,
    "pcpu_bpf.top": 5,
    "pcpu_bpf.cli": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def wing(module: str) -> str:
    """The longest FLOORS key that is ``module`` or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in FLOORS:
            return candidate
    raise AssertionError(f"{module} belongs to no wing: add it to FLOORS")


def imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth of the file (lazy ones too)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in sources()}
    return {m for m in found if m in modules}


def sources() -> list[Path]:
    return sorted(
        p for d in ("pcpu_bpf", "exporters") for p in (ROOT / d).rglob("*.py") if p.is_file()
    )


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in sources()}


def test_every_module_belongs_to_a_wing() -> None:
    for module in graph():
        wing(module)


def test_imports_point_down_or_stay_in_their_wing() -> None:
    wrong = []
    for module, targets in graph().items():
        here = wing(module)
        for target in targets:
            there = wing(target)
            if there != here and FLOORS[there] >= FLOORS[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
