"""Load: the daemon on the live kernel, a percpu workload running (per-CPU map churn and
`unshare -n` churn) and 50 concurrent scrapers for a bounded number of scrapes: no scrape
fails, the daemon's memory stays flat, and afterwards the counts of the workload's own
call site are exact.

The map churn (tests/churn.py) counts every allocation it makes at bpf_map_alloc_percpu.
Other processes on the host may allocate there too meanwhile: a private ftrace instance
records those (any pid but the churn's and this one's), so the daemon's figures must lie
between the churn's own and the churn's plus theirs, which are equal when nobody else
created a per-CPU map. Figures at a larger scale: benchmarks/load.py, docs/reliability.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from churn import Churn
from daemon_helpers import Daemon, Samples, collector_success, parse
from load_run import foreign_allocations, function_range, scrape_rounds, site_value
from waiting import wait_until

pytestmark = pytest.mark.privileged

SITE_FUNCTION = "bpf_map_alloc_percpu"
SCRAPERS, ROUNDS = 50, 4
# The daemon's RSS after the first round (imports done, buffers grown) against the most
# it reaches over the later rounds.
RSS_GROWTH_BOUND = 8 << 20


def site(samples: Samples, family: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == family and ("call_site", SITE_FUNCTION) in labels
    )


def dropped(samples: Samples) -> float:
    return samples.get(
        ("pcpu_tracking_dropped_total", frozenset({("reason", "live_table_full")})), 0.0
    )


def every_part_served(body: str) -> str | None:
    samples = parse(body)
    bad = {part: v for part, v in collector_success(samples).items() if v != 1}
    return f"collector_success {bad}" if bad else None


def test_fifty_scrapers_beside_churn_no_error_flat_memory_exact_counts(pin_dir: Path) -> None:
    start, end = function_range(SITE_FUNCTION)
    daemon = Daemon("--backend", "bpf", "--pin-dir", str(pin_dir))
    try:
        daemon.wait_ready()
        maps, netns = Churn("maps", gated=True), Churn("netns", gated=True)
        try:
            with foreign_allocations(start, end, [os.getpid(), maps.pid]) as foreign:
                base, base_dropped = site_value(pin_dir, start, end)
                maps.go()
                netns.go()
                try:
                    load = scrape_rounds(
                        daemon.url, daemon.proc.pid, SCRAPERS, ROUNDS, every_part_served
                    )
                finally:
                    own, churned = maps.stop(), netns.stop()

                def freed() -> Samples | None:
                    # Every allocation of the churn is freed as a tracked free of the site, or
                    # was dropped from a full live table (the host may be busier than the test).
                    s = parse(daemon.scrape())
                    frees = site(s, "pcpu_frees_total") - base.frees
                    return s if frees + dropped(s) - base_dropped >= own.allocations else None

                final = wait_until(
                    freed, what=f"the frees of the churn's {own.allocations} allocations"
                )
        finally:
            # Stopped already, unless something failed before: never leave churn running.
            for churn in (maps, netns):
                if churn.proc.poll() is None:
                    churn.proc.kill()
                    churn.proc.wait()
        code, log = daemon.stop()
    finally:
        daemon.close()

    assert code == 0, log
    assert load.failures == [], load.failures[:5]
    assert len(load.latencies) == load.bodies == SCRAPERS * ROUNDS
    assert own.allocations > 0 and churned.rounds > 0, (own, churned)
    assert not own.errors and not churned.errors, (own.errors, churned.errors)
    growth = max(load.rss_after_round[1:]) - load.rss_after_round[0]
    assert growth <= RSS_GROWTH_BOUND, load.rss_after_round
    assert "WARNING" not in log and "ERROR" not in log, log

    allocations = site(final, "pcpu_allocations_total") - base.allocations
    requested = site(final, "pcpu_requested_bytes_total") - base.requested_bytes
    frees = site(final, "pcpu_frees_total") - base.frees
    drops = dropped(final) - base_dropped
    assert allocations >= own.allocations
    assert requested >= own.requested_bytes
    assert own.allocations - drops <= frees
    if foreign.overflowed:
        return  # a host busy with per-CPU maps (another load run): no upper bound known
    theirs = len(foreign.lines)
    their_bytes = sum(int(line.split(" size=")[1].split()[0]) for line in foreign.lines)
    assert allocations <= own.allocations + theirs
    assert requested <= own.requested_bytes + their_bytes
    # Frees: the churn's, plus those of allocations others made since the daemon started.
    assert frees <= own.allocations + theirs + base.live_allocations
    if theirs == 0 and drops == 0:  # the usual case: nobody else made a per-CPU map
        assert (allocations, requested, frees) == (
            own.allocations,
            own.requested_bytes,
            own.allocations,
        )
