"""A burst of percpu memory for recordings: network namespaces and per-CPU BPF maps.

Run as root:  .venv/bin/python scripts/percpu_burst.py --netns 200 --maps 60

Starts NETNS processes each in a new network namespace (``unshare -n``), creates MAPS
per-CPU array maps of 64 entries of 4 KiB (256 KiB each per CPU: enough to need new
chunks), then, in random order, closes the maps and ends the namespaces, a mix of small
and large percpu frees as a busy host sees them. Used for the recordings in
docs/recording.md.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys

from pcpu_bpf.bpf.syscalls import create_percpu_array


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--netns", type=int, default=200)
    ap.add_argument("--maps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    # each namespace's process waits on stdin: closing it ends the process and the netns
    spaces = [
        subprocess.Popen(["unshare", "-n", "cat"], stdin=subprocess.PIPE) for _ in range(args.netns)
    ]
    maps = [create_percpu_array(4096, 64) for _ in range(args.maps)]
    things: list[subprocess.Popen[bytes] | int] = [*spaces, *maps]
    rng.shuffle(things)
    for thing in things:
        if isinstance(thing, int):
            os.close(thing)
        else:
            assert thing.stdin is not None
            thing.stdin.close()
            thing.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
