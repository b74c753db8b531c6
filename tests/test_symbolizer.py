from __future__ import annotations

from pathlib import Path

import pytest

from pcpu_bpf.errors import StatsParseError
from pcpu_bpf.model import symbolizer
from pcpu_bpf.model.symbolizer import LAST_SYMBOL_SIZE, Symbolizer, hex_label

PROC = Path(__file__).parent / "fixtures" / "proc"
KALLSYMS = Path("/proc/kallsyms")

MM_INIT = 0xFFFFFFFF8135C360
TRAMPOLINE = 0xFFFFFFFFC0201000


@pytest.fixture(scope="module")
def live_excerpt():
    return Symbolizer.from_file(PROC / "live-6.18" / "kallsyms")


@pytest.mark.parametrize(
    ("addr", "name"),
    [
        (MM_INIT, "mm_init"),
        (MM_INIT + 0x2BF, "mm_init"),  # a return address inside: offset folded
        (0xFFFFFFFF8135C84F, "mm_init"),  # last byte before the next symbol
        (0xFFFFFFFF8135C850, "__pfx_nr_processes"),
        (0xFFFFFFFF8135C358, "__pfx_mm_init"),
        (0xFFFFFFFF81000000, "srso_alias_untrain_ret"),  # aliases: the first listed names it
        (0xFFFFFFFF81248A58, "calibration_delay_done"),  # W, listed out of address order
        (0xFFFFFFFF815DC5A0, "pcpu_alloc_noprof"),
        (0xFFFFFFFF82276510, "_etext"),  # a text marker still covers what follows it
        (0xFFFFFFFF80FFFFFF, "0xffffffff80ffffff"),  # below the first symbol
        (0xFFFFFFFF82400000, "0xffffffff82400000"),  # a data symbol ends the text range
        (0xFFFFFFFF82500000, "0xffffffff82500000"),
        (TRAMPOLINE + 5, "ftrace_trampoline"),  # a module symbol: the name without [module]
        (TRAMPOLINE + LAST_SYMBOL_SIZE - 1, "ftrace_trampoline"),
        (TRAMPOLINE + LAST_SYMBOL_SIZE, "0xffffffffc0202000"),  # past the bounded last one
        (0, "0x0000000000000000"),
        (None, "unknown"),  # a kernel without the call_site field
    ],
)
def test_resolve_kallsyms_excerpt(live_excerpt, addr, name):
    assert live_excerpt.resolve(addr) == name
    assert live_excerpt.resolve(addr) == name  # the cached answer is the same


def test_excerpt_is_not_restricted(live_excerpt):
    assert not live_excerpt.is_restricted
    assert len(live_excerpt) == 33  # 39 lines - 3 data markers - 3 aliases at _stext


def test_restricted_kallsyms_gives_hex_labels():
    sym = Symbolizer.from_file(PROC / "restricted" / "kallsyms")
    assert sym.is_restricted
    assert len(sym) == 0
    assert sym.resolve(MM_INIT) == "0xffffffff8135c360"
    assert sym.resolve(0) == "0x0000000000000000"
    assert sym.resolve(None) == "unknown"


def test_empty_kallsyms_is_restricted():
    # systemd's ProtectKernelTunables= covers /proc/kallsyms with an empty file: that is a
    # kallsyms that names nothing, and must be reported like an all-zero one.
    sym = Symbolizer.from_kallsyms_text("")
    assert sym.is_restricted
    assert sym.resolve(MM_INIT) == "0xffffffff8135c360"


@pytest.mark.parametrize(
    ("addr", "name"),
    [
        (0xFFF, "0x0000000000000fff"),
        (0x1000, "alpha"),
        (0x1FFF, "alpha"),
        (0x2000, "beta"),
        (0x2000 + LAST_SYMBOL_SIZE - 1, "beta"),
        (0x2000 + LAST_SYMBOL_SIZE, "0x0000000000003000"),
    ],
)
def test_from_symbols(addr, name):
    # Given out of order: a scenario's table is a mapping, not a sorted list.
    sym = Symbolizer.from_symbols({"beta": 0x2000, "alpha": 0x1000})
    assert sym.resolve(addr) == name


@pytest.mark.parametrize(
    ("text", "addr", "name"),
    [
        # A function and a data marker at one address: the function names it.
        ("0000000000001000 D marker\n0000000000001000 t func\n", 0x1004, "func"),
        ("0000000000001000 t func\n0000000000001000 D marker\n", 0x1004, "func"),
        # Lowercase w is a weak function too.
        ("0000000000001000 w weak\n", 0x1004, "weak"),
        # Absolute, bss and rodata symbols never name an address.
        ("0000000000001000 A abs\n0000000000002000 b bss\n", 0x1004, "0x0000000000001004"),
        ("0000000000001000 T f\n0000000000001100 r ro\n", 0x1104, "0x0000000000001104"),
        # Blank lines are skipped.
        ("\n0000000000001000 T f\n\n", 0x1000, "f"),
    ],
)
def test_kallsyms_types(text, addr, name):
    assert Symbolizer.from_kallsyms_text(text).resolve(addr) == name


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("zzzz T foo\n", 1),
        ("0000000000001000 T foo\n0000000000001000 T\n", 2),
        ("0000000000001000\n", 1),
    ],
)
def test_malformed_kallsyms(text, line):
    with pytest.raises(StatsParseError, match=f"kallsyms line {line}: "):
        Symbolizer.from_kallsyms_text(text)


def test_hex_label_is_16_lowercase_digits():
    assert hex_label(0xFFFFFFFF8123ABCD) == "0xffffffff8123abcd"
    assert hex_label(0xABC) == "0x0000000000000abc"


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(symbolizer, "_CACHE_SIZE", 4)
    sym = Symbolizer.from_symbols({"f": 0x1000})
    names = [sym.resolve(0x1000 + i) for i in range(10)]
    assert names == ["f"] * 10
    assert len(sym._cache) <= 4


def test_from_file_propagates_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        Symbolizer.from_file(tmp_path / "kallsyms")


def _unique_text_symbol(text: str, candidates: tuple[str, ...]) -> tuple[str, int]:
    """A candidate function whose address no other text symbol shares."""
    by_addr: dict[int, list[str]] = {}
    for line in text.splitlines():
        addr, kind, name = line.split()[:3]
        if kind in "tTwW":
            by_addr.setdefault(int(addr, 16), []).append(name)
    for addr, names in by_addr.items():
        if len(names) == 1 and names[0] in candidates:
            return names[0], addr
    pytest.skip(f"none of {candidates} in {KALLSYMS} with a unique address")


@pytest.mark.privileged
def test_live_kallsyms_resolves_a_known_function():
    text = KALLSYMS.read_text()
    sym = Symbolizer.from_kallsyms_text(text)
    name, addr = _unique_text_symbol(text, ("mm_init", "pcpu_alloc_noprof", "free_percpu"))
    assert sym.resolve(addr) == name
    assert sym.resolve(addr + 1) == name
    assert Symbolizer.from_file().resolve(addr) == name
