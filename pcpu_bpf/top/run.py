"""pcpu-top's loop: one table (or JSON line) per interval from a Backend's Snapshots."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from pcpu_bpf.backends import CONSTRUCTORS, Backend, Constructor
from pcpu_bpf.top.render import render_json, render_text
from pcpu_bpf.top.view import DEFAULT_SORT, build_view

# Home the cursor and clear the screen: the live view redraws in place like top(1).
CLEAR = "\x1b[H\x1b[2J"
DEFAULT_LIMIT = 20  # bcc's slabratetop -r default


def _clock_text() -> str:
    return time.strftime("%H:%M:%S")


def _iso_time() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _terminal_lines() -> int | None:
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().lines


@dataclass
class TopDeps:
    """pcpu-top's contact with the world; tests pass their own through ``obj=``."""

    constructors: Mapping[str, Constructor] = field(default_factory=lambda: CONSTRUCTORS)
    sleep: Callable[[float], None] = time.sleep
    clock_text: Callable[[], str] = _clock_text
    terminal_lines: Callable[[], int | None] = _terminal_lines
    iso_time: Callable[[], str] = _iso_time  # JSON's "time": for machines, with the zone


@dataclass(frozen=True)
class TopOptions:
    """What to show and how often."""

    interval: float = 1.0
    count: int | None = 1  # None: until Ctrl-C
    live: bool = False
    sort: str = DEFAULT_SORT
    limit: int = DEFAULT_LIMIT
    as_json: bool = False
    source: str = ""  # names the data source on the first header line


def run_top(
    backend: Backend,
    out: TextIO,
    opts: TopOptions,
    *,
    deps: TopDeps | None = None,
) -> None:
    """Print ``opts.count`` tables (or JSON documents) of ``backend``, one per interval."""
    deps = deps or TopDeps(terminal_lines=lambda: None)
    before = backend.snapshot()
    # After the first snapshot, as bcc prints after attaching: a source that cannot
    # deliver fails before anything promises output.
    if not opts.as_json:
        out.write(backend.banner + "\n")
        out.flush()
    shown = 0
    while opts.count is None or shown < opts.count:
        deps.sleep(opts.interval)
        after = backend.snapshot()
        view = build_view(before, after)
        if opts.as_json:
            out.write(
                render_json(
                    view, sort=opts.sort, limit=opts.limit, source=opts.source, time=deps.iso_time()
                )
                + "\n"
            )
        else:
            text = render_text(
                view,
                sort=opts.sort,
                limit=opts.limit,
                source=opts.source,
                clock=deps.clock_text(),
                max_lines=deps.terminal_lines() if opts.live else None,
            )
            out.write((CLEAR if opts.live else "\n") + text)
        out.flush()
        before = after
        shown += 1
