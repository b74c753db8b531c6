#!/usr/bin/env python3
"""One simulated host of scripts/fleet.py: `pcpu-bpf serve --backend sim`, at a chosen pace.

The daemon is the real one (the same listener, HTTP server, collector and exposition as
`pcpu-bpf serve`); only the simulated workload's pace differs. At the simulator's
default 2,000 operations a second a host costs about 4% of a core to simulate, so fifty
of them fill two cores; calm hosts run at a tenth of that pace and still export the same
families and call sites. The hosts whose growth the alerts must see keep full pace.

    fleet_host.py LISTEN SCENARIO SEED OPS_PER_SECOND [SPEED]

SPEED (default 1) runs simulated time that many times faster than the wall clock, at
OPS_PER_SECOND operations per simulated second: ages and hour-long trends show in
minutes without simulating more work.
"""

from __future__ import annotations

import sys
import time

from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.daemon.listener import bind, parse_listen
from pcpu_bpf.daemon.server import serve
from pcpu_bpf.daemon.systemd import configure_logging


def main() -> None:
    listen, scenario, seed, pace = sys.argv[1:5]
    speed = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    configure_logging()
    sock = bind(parse_listen(listen))
    clock = lambda: time.monotonic() * speed  # noqa: E731 - the simulator's clock
    serve(SimBackend(scenario, int(seed), ops_per_second=float(pace), clock=clock), sock)


if __name__ == "__main__":
    main()
