"""pcpu-top's loop: one table (or JSON line) per interval from a Backend's Snapshots.

The first window of a fresh trace starts when tracing began (the programs attached),
not at the first read: what happened in between is counted, and the header says where
the window starts. In --live on a terminal, keys are read between frames (keys.py).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from pcpu_bpf.backends import CONSTRUCTORS, Backend, Constructor
from pcpu_bpf.model.snapshot import Snapshot
from pcpu_bpf.top.chunks import ASCII_GLYPHS, BLOCK_GLYPHS, render_chunks, render_chunks_json
from pcpu_bpf.top.keys import KeySource, NoKeys
from pcpu_bpf.top.render import DETAIL, Layout, render_json, render_text
from pcpu_bpf.top.view import DEFAULT_GROUPING, DEFAULT_SORT, View, build_view

# Home the cursor and clear the screen: the live view redraws in place like top(1).
CLEAR = "\x1b[H\x1b[2J"
DEFAULT_LIMIT = 20  # bcc's slabratetop -r default
# The keys of the live view, as its help line names them (and the order now).
HELP_LINE = "keys: q quit  s sizes/table  g sort by growth/back"
TREND_LENGTH = DETAIL["trend"].width


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
    # Lines of the terminal stdout is; None when it is not one (plain output then).
    terminal_lines: Callable[[], int | None] = _terminal_lines
    iso_time: Callable[[], str] = _iso_time  # JSON's "time": for machines, with the zone
    # The keyboard of --live (keys.Keyboard), None where there is no terminal to read.
    keys: Callable[[], AbstractContextManager[KeySource]] | None = None


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
    sizes: bool = False  # the size distribution instead of the call-site table
    min_age: float | None = None  # only allocations live at least this long
    by: str = DEFAULT_GROUPING  # what a row is (view.GROUPINGS)
    chunks: bool = False  # the chunk view instead of the call-site table
    block_glyphs: bool = False  # draw pages with block characters (a UTF-8 terminal)


@dataclass
class _Screen:
    """What the live view can change while it runs, and the last frame to redraw."""

    sort: str
    sizes: bool
    view: View | None = None
    clock: str = ""
    trends: dict[str, deque[int]] = field(default_factory=dict)


def _start(backend: Backend, first: Snapshot) -> tuple[Snapshot, bool]:
    """The Snapshot a first window starts from: the empty one of the moment tracing began,
    when the counters began with this backend; else the first read."""
    started = backend.started_at()
    if started is None:
        return first, False
    return Snapshot(backend=first.backend, kernel=first.kernel, timestamp=started), True


def run_top(
    backend: Backend,
    out: TextIO,
    opts: TopOptions,
    *,
    deps: TopDeps | None = None,
) -> None:
    """Print ``opts.count`` tables (or JSON documents) of ``backend``, one per interval."""
    deps = deps or TopDeps(terminal_lines=lambda: None)
    before, from_start = _start(backend, backend.snapshot())
    # After the first snapshot, as bcc prints after attaching: a source that cannot
    # deliver fails before anything promises output.
    if not opts.as_json:
        out.write(backend.banner + "\n")
        out.flush()
    reading = opts.live and deps.keys is not None
    keyboard: AbstractContextManager[KeySource] = (
        deps.keys() if reading and deps.keys is not None else nullcontext(NoKeys(deps.sleep))
    )
    screen = _Screen(sort=opts.sort, sizes=opts.sizes)
    with keyboard as keys:
        shown = 0
        while opts.count is None or shown < opts.count:
            if not _wait(keys, opts, deps, out, screen, backend, reading):
                return
            after = backend.snapshot()
            view = build_view(
                before, after, from_start=from_start, min_age=opts.min_age, by=opts.by
            )
            _remember(screen, view)
            screen.view, screen.clock = view, deps.clock_text()
            if opts.chunks:
                _write_chunks(after, out, opts, deps)
            elif opts.as_json:
                out.write(
                    render_json(
                        view,
                        sort=screen.sort,
                        limit=opts.limit,
                        source=opts.source,
                        time=deps.iso_time(),
                        label_key=opts.by,
                    )
                    + "\n"
                )
            else:
                _draw(out, opts, deps, screen, backend, reading)
            out.flush()
            before, from_start = after, False
            shown += 1


def _wait(
    keys: KeySource,
    opts: TopOptions,
    deps: TopDeps,
    out: TextIO,
    screen: _Screen,
    backend: Backend,
    reading: bool,
) -> bool:
    """Wait one interval, acting on the keys typed meanwhile; False when asked to quit."""
    remaining = opts.interval
    while True:
        began = time.monotonic()
        key = keys.wait(remaining)
        if key is None:
            return True
        remaining -= time.monotonic() - began
        if key in ("q", "Q"):
            return False
        if key == "s":
            screen.sizes = not screen.sizes
        elif key == "g":
            screen.sort = opts.sort if screen.sort == "growth" else "growth"
        else:
            continue
        if screen.view is not None:
            _draw(out, opts, deps, screen, backend, reading)
            out.flush()


def _remember(screen: _Screen, view: View) -> None:
    """Add each row's live bytes to its trend; rows gone from the view are dropped."""
    seen = set()
    for row in view.rows:
        if row.live_bytes is None:
            continue
        seen.add(row.label)
        screen.trends.setdefault(row.label, deque(maxlen=TREND_LENGTH)).append(row.live_bytes)
    for label in [k for k in screen.trends if k not in seen]:
        del screen.trends[label]


def _draw(
    out: TextIO, opts: TopOptions, deps: TopDeps, screen: _Screen, backend: Backend, reading: bool
) -> None:
    assert screen.view is not None
    lines = deps.terminal_lines()
    terminal = lines is not None
    layout = Layout(
        live=opts.live,
        sizes=screen.sizes,
        plain=not terminal,
        trends=screen.trends,
        help_line=f"{HELP_LINE}  (sorted by {screen.sort})" if reading else None,
        start_event=backend.start_event,
        label_header=LABEL_HEADERS[opts.by],
    )
    text = render_text(
        screen.view,
        sort=screen.sort,
        limit=opts.limit,
        source=opts.source,
        clock=screen.clock,
        max_lines=lines if opts.live else None,
        layout=layout,
    )
    # Redraw in place only on a terminal; elsewhere frames follow one another, plain.
    out.write((CLEAR if opts.live and terminal else "\n") + text)


# The first column's header, by what a row is.
LABEL_HEADERS = {"call_site": "CALL SITE", "owner": "OWNER", "cgroup": "CGROUP"}


def _write_chunks(snapshot: Snapshot, out: TextIO, opts: TopOptions, deps: TopDeps) -> None:
    """One chunk view: the state at the end of the interval, not a rate."""
    source = opts.source or snapshot.backend
    if opts.as_json:
        out.write(render_chunks_json(snapshot, source=source, time=deps.iso_time()) + "\n")
        return
    glyphs = BLOCK_GLYPHS if opts.block_glyphs else ASCII_GLYPHS
    text = render_chunks(snapshot, source=source, clock=deps.clock_text(), glyphs=glyphs)
    terminal = deps.terminal_lines() is not None
    out.write((CLEAR if opts.live and terminal else "\n") + text)
