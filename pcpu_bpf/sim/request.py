"""One allocation asked of a simulation from outside its scenario, and what became of it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pcpu_bpf.errors import ScenarioError

# Such requests come from a caller outside the scenario's symbol table (a module
# address), so they show under their own hex label.
REQUEST_CALL_SITE = 0xFFFFFFFFC0DE0000
DEFAULT_ALIGN = 8
# ASCII digits, at most 20 (\d would take other scripts' digits, int() refuses 4300).
_TEXT = re.compile(r"(?P<size>[0-9]{1,20})(?:/(?P<align>[0-9]{1,20}))?(?P<atomic>,atomic)?")


@dataclass(frozen=True, slots=True)
class AllocRequest:
    """A request as written on the command line: SIZE[/ALIGN][,atomic]."""

    size: int
    align: int = DEFAULT_ALIGN
    atomic: bool = False

    @classmethod
    def parse(cls, text: str) -> AllocRequest:
        """Parse "SIZE[/ALIGN][,atomic]" (align 8 when left out); ScenarioError otherwise."""
        m = _TEXT.fullmatch(text)
        if not m:
            raise ScenarioError(f"{text!r} is not SIZE[/ALIGN][,atomic]")
        return cls(int(m["size"]), int(m["align"] or DEFAULT_ALIGN), bool(m["atomic"]))


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What the kernel would have done: a pointer, a silent rejection, or a failure."""

    ptr: int | None = None
    # why pcpu_alloc_noprof() returned early: no tracepoint fired, no stats changed
    rejection: str | None = None

    @property
    def failed(self) -> bool:
        """The allocation failed and percpu_alloc_percpu_fail was emitted."""
        return self.ptr is None and self.rejection is None
