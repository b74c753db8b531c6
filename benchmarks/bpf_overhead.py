"""BPF program cost per event and workload slowdown, for docs/benchmarks.md.

Run as root from the repository:  .venv/bin/python benchmarks/bpf_overhead.py

Part 1, cost per event: with kernel.bpf_stats_enabled=1, attach at once the profiler,
a do-nothing raw tracepoint program (noop.bpf.c) and a bpftrace script that aggregates
the same things (pcpu_aggregate.bt); drive a percpu workload; per program,
run_time_ns / run_cnt over each repetition. Medians over the repetitions.

Part 2, slowdown: time the same workload with nothing attached, with the profiler, and
with the bpftrace script, in rotating order each repetition (bpf_stats off, as in
production). Medians, and the slowdown relative to nothing attached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pcpu_bpf.backends.bpf import BpfBackend
from pcpu_bpf.bpf import syscalls

HERE = Path(__file__).parent
COMPARED = "pcpu-bpf (compared)"  # the row of --compare-bpf-dir
OWNERS = "pcpu-bpf --owners"  # the row of --owners: a second set, stacks at helpers
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def map_churn(n: int) -> None:
    """n per-CPU array maps of 16 entries, created and closed: 16 n allocs and frees."""
    for i in range(n):
        syscalls.close(syscalls.create_percpu_array(8 * (1 + i % 64), 16))


def netns_churn(n: int) -> list[float]:
    """n `unshare -n true` (a network namespace made and torn down); seconds of each."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["unshare", "-n", "true"], check=True)
        times.append(time.perf_counter() - t0)
    return times


Sample = Callable[[], dict[str, tuple[int, int]]]  # event -> (runs, run time ns)


def prog_sample(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Each program's (run_cnt, run_time_ns), by the event it serves."""
    out = {}
    for name, fd in fds.items():
        info = syscalls.prog_info(fd)
        out[name] = (info.run_cnt, info.run_time_ns)
    return out


def cost_rounds(
    tools: dict[str, Sample], reps: int, workload: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """ns per event of each tool and event, one figure per repetition of ``workload``
    (which returns once its events are all in)."""
    costs: dict[str, dict[str, list[float]]] = {}
    for _ in range(reps):
        before = {k: s() for k, s in tools.items()}
        workload()
        after = {k: s() for k, s in tools.items()}
        for tool in tools:
            for ev in ("alloc", "free"):
                runs = after[tool][ev][0] - before[tool][ev][0]
                ns = after[tool][ev][1] - before[tool][ev][1]
                if runs:
                    costs.setdefault(tool, {}).setdefault(ev, []).append(ns / runs)
    return costs


@contextmanager
def profiler(live_capacity: int = 262_144, owners: bool = False) -> Iterator[Sample]:
    with BpfBackend(live_capacity=live_capacity, kernel_stats=lambda: None, owners=owners) as b:
        fds = {"alloc": b.program_fds["on_alloc"], "free": b.program_fds["on_free"]}
        yield lambda: prog_sample(fds)


@contextmanager
def other_profiler(bpf_dir: Path, live_capacity: int = 262_144) -> Iterator[Sample]:
    """Another version of the programs (e.g. main's bpf_programs/, exported to a directory),
    loaded with bcc here and given today's defines: its maps may be laid out otherwise,
    which the loader would refuse, and only its run time is measured."""
    import bcc

    from pcpu_bpf.bpf.loader import build_cflags, program_defines
    from pcpu_bpf.bpf.tracefs import read_layout
    from pcpu_bpf.kernel.procfs import read_possible_cpus

    defines = program_defines(
        read_layout(None),
        live_capacity=live_capacity,
        site_capacity=4096,
        nr_possible_cpus=read_possible_cpus(),
    )
    where = bpf_dir.resolve()  # bcc resolves a relative include directory elsewhere
    b = bcc.BPF(src_file=str(where / "pcpu.bpf.c").encode(), cflags=build_cflags(where, defines))
    b.attach_raw_tracepoint(tp=b"percpu_alloc_percpu", fn_name=b"on_alloc")
    b.attach_raw_tracepoint(tp=b"percpu_free_percpu", fn_name=b"on_free")
    fds = {"alloc": b.funcs[b"on_alloc"].fd, "free": b.funcs[b"on_free"].fd}
    try:
        yield lambda: prog_sample(fds)
    finally:
        b.cleanup()


@contextmanager
def noop() -> Iterator[Sample]:
    import bcc

    b = bcc.BPF(src_file=str(HERE / "noop.bpf.c").encode())
    b.attach_raw_tracepoint(tp=b"percpu_alloc_percpu", fn_name=b"noop_alloc")
    b.attach_raw_tracepoint(tp=b"percpu_free_percpu", fn_name=b"noop_free")
    fds = {"alloc": b.funcs[b"noop_alloc"].fd, "free": b.funcs[b"noop_free"].fd}
    try:
        yield lambda: prog_sample(fds)
    finally:
        b.cleanup()


def _progs() -> dict[int, dict[str, object]]:
    out = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, text=True)
    return {p["id"]: p for p in json.loads(out.stdout)}


@contextmanager
def bpftrace() -> Iterator[Sample]:
    before = set(_progs())
    proc = subprocess.Popen(
        ["bpftrace", str(HERE / "pcpu_aggregate.bt")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def mine() -> list[dict[str, object]]:
        return [p for i, p in _progs().items() if i not in before and p.get("type") == "tracepoint"]

    try:
        deadline = time.monotonic() + 30
        while len(mine()) < 3:  # alloc, free, fail
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise SystemExit(f"bpftrace did not attach: {err}")
            time.sleep(0.2)
        time.sleep(1.0)

        def sample() -> dict[str, tuple[int, int]]:
            # Names are cut to 15 characters: alloc and alloc_fail share a prefix, and
            # the one that runs is the alloc program.
            res = {}
            progs = mine()
            for kind, prefix in (("alloc", "percpu_alloc_pe"), ("free", "percpu_free_per")):
                cands = [p for p in progs if str(p.get("name", "")).startswith(prefix)]
                best = max(cands, key=lambda p: int(p.get("run_cnt", 0)))  # type: ignore[call-overload]
                res[kind] = (int(best.get("run_cnt", 0)), int(best.get("run_time_ns", 0)))  # type: ignore[call-overload]
            return res

        yield sample
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # printing its maps at exit can take long
            proc.kill()
            proc.wait()


def workload(maps: int, netns: int) -> None:
    map_churn(maps)
    netns_churn(netns)


def per_event_cost(
    reps: int,
    maps: int,
    netns: int,
    live_capacity: int,
    compare: Path | None = None,
    compare_first: bool = False,
    owners: bool = False,
) -> dict[str, dict[str, float]]:
    """Median ns per event, per tool and event, all attached together. Programs on one
    tracepoint run in the order they were attached, and the first pays more (about 1.15x
    in an A/A run here): ``compare_first`` attaches the compared programs first, so two
    runs with either order cancel it."""
    other = other_profiler(compare, live_capacity) if compare else _null()
    with ExitStack() as stack:
        o = stack.enter_context(other) if compare_first else None
        p = stack.enter_context(profiler(live_capacity))
        if not compare_first:
            o = stack.enter_context(other)
        n = stack.enter_context(noop())
        t = stack.enter_context(bpftrace())
        tools = {"pcpu-bpf": p, "do-nothing": n, "bpftrace": t}
        if o is not None:
            tools[COMPARED] = o
        if owners:
            tools[OWNERS] = stack.enter_context(profiler(live_capacity, owners=True))

        def one_round() -> None:
            workload(maps, netns)
            time.sleep(1.5)  # closed maps are freed from a kworker

        costs = cost_rounds(tools, reps, one_round)
    return {t: {e: statistics.median(v) for e, v in evs.items()} for t, evs in costs.items()}


def slowdown(reps: int, maps: int, netns: int) -> dict[str, dict[str, float]]:
    """Median seconds with nothing, pcpu-bpf or bpftrace attached: per map batch, and per
    single `unshare -n true` (the kernel tears namespaces down from a workqueue after the
    process exits, so a pause follows each batch and each run is timed on its own)."""
    configs: dict[str, Callable[[], object]] = {
        "nothing": lambda: _null(),
        "pcpu-bpf": profiler,
        "bpftrace": bpftrace,
    }
    times: dict[str, dict[str, list[float]]] = {c: {"maps": [], "netns": []} for c in configs}
    order = list(configs)
    for rep in range(reps):
        for name in order[rep % 3 :] + order[: rep % 3]:
            with configs[name]():  # type: ignore[attr-defined]
                time.sleep(0.5)
                t0 = time.perf_counter()
                map_churn(maps)
                times[name]["maps"].append(time.perf_counter() - t0)
                time.sleep(1.5)
                times[name]["netns"] += netns_churn(netns)
                time.sleep(3.0)
    return {c: {k: statistics.median(v) for k, v in parts.items()} for c, parts in times.items()}


@contextmanager
def _null() -> Iterator[None]:
    yield None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--maps", type=int, default=1000, help="maps per repetition (16 allocs each)")
    ap.add_argument("--netns", type=int, default=50, help="unshare -n runs per repetition")
    ap.add_argument(
        "--live-capacity",
        type=int,
        action="append",
        help="pcpu-bpf live table sizes to measure (default: 262144, 65536 and 4096)",
    )
    ap.add_argument(
        "--cost-only", action="store_true", help="measure the cost per event only (part 1)"
    )
    ap.add_argument(
        "--compare-bpf-dir",
        type=Path,
        help="also attach the programs of this directory (another version) in part 1",
    )
    ap.add_argument(
        "--compare-first",
        action="store_true",
        help="attach the compared programs before pcpu-bpf's (they then run first)",
    )
    ap.add_argument(
        "--owners",
        action="store_true",
        help="also attach a second set with owners on (stacks at the helpers) in part 1",
    )
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("bpftrace") is None or shutil.which("bpftool") is None:
        print("needs root, bpftrace and bpftool (apt install bpftrace bpftool)", file=sys.stderr)
        return 2
    old = STATS.read_text().strip()
    try:
        STATS.write_text("1")
        caps = args.live_capacity or [262_144, 65_536, 4096]
        costs = {
            c: per_event_cost(
                args.reps,
                args.maps,
                args.netns,
                c,
                args.compare_bpf_dir,
                args.compare_first,
                args.owners,
            )
            for c in caps
        }
        STATS.write_text("0")
        slow = None if args.cost_only else slowdown(args.reps, args.maps, args.netns)
    finally:
        STATS.write_text(old)

    for cap, cost in costs.items():
        print(f"## per-event cost, live table {cap} (median of {args.reps}; ns per event)")
        print("| program | alloc | free |")
        print("| --- | ---: | ---: |")
        for tool in ("do-nothing", "pcpu-bpf", OWNERS, COMPARED, "bpftrace"):
            if tool not in cost:
                continue
            c = cost[tool]
            alloc, free = c.get("alloc", float("nan")), c.get("free", float("nan"))
            print(f"| {tool} | {alloc:.0f} | {free:.0f} |")
        for ev in ("alloc", "free"):
            p, n, t = (cost[x][ev] for x in ("pcpu-bpf", "do-nothing", "bpftrace"))
            print(f"{ev}: pcpu-bpf / do-nothing = {p / n:.2f}x, pcpu-bpf / bpftrace = {p / t:.2f}x")
            if COMPARED in cost:
                print(f"{ev}: pcpu-bpf / {COMPARED} = {p / cost[COMPARED][ev]:.2f}x")
            if OWNERS in cost:
                print(f"{ev}: {OWNERS} / pcpu-bpf = {cost[OWNERS][ev] / p:.2f}x")
        print()
    if slow is None:
        return 0
    print(f"## workload time (median of {args.reps}, seconds)")
    print(f"| attached | {args.maps} map create+close | one unshare -n true |")
    print("| --- | ---: | ---: |")
    base = slow["nothing"]
    for name, parts in slow.items():
        rel = {k: 100 * (parts[k] / base[k] - 1) for k in parts}
        print(
            f"| {name} | {parts['maps']:.4f} ({rel['maps']:+.1f}%) "
            f"| {parts['netns']:.5f} ({rel['netns']:+.1f}%) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
