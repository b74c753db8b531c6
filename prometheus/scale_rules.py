"""rules.yml with time compressed: every range, offset and `for:` divided by a factor.

    python3 prometheus/scale_rules.py 180 < prometheus/rules.yml > /tmp/fast-rules.yml

An alert that needs hours of a leak fires in a minute or two against daemons whose
workloads run at their real pace: the fleet script and the real-Prometheus tests load
the rules this way. Thresholds are rates (per second), so they hold at any scale; no
window goes below `--floor` seconds (a rate needs a few scrapes in its window).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import yaml

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"


def seconds(duration: str) -> float:
    """A Prometheus duration (1h30m, 5m, 250ms) in seconds."""
    return sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+)(ms|[smhdwy])", duration))


def _scaled(duration: str, factor: float, floor: float) -> str:
    millis = round(max(floor, seconds(duration) / factor) * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def scale_expr(expr: str, factor: float, floor: float) -> str:
    """``expr`` with ranges, subquery ranges and steps, and offsets divided by ``factor``."""

    def bracket(match: re.Match[str]) -> str:
        parts = match.group(1).split(":")
        return "[" + ":".join(_scaled(p, factor, floor) if p else p for p in parts) + "]"

    expr = re.sub(rf"\[({_DURATION}(?::(?:{_DURATION})?)?)\]", bracket, expr)
    return re.sub(
        rf"\boffset\s+({_DURATION})",
        lambda m: "offset " + _scaled(m.group(1), factor, floor),
        expr,
    )


def scale_rules(document: dict[str, Any], factor: float, floor: float = 5.0) -> dict[str, Any]:
    """A rules document with every rule's time compressed ``factor`` times."""
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = scale_expr(str(rule["expr"]), factor, floor)
            if "for" in rule:
                rule["for"] = _scaled(str(rule["for"]), factor, 0)
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("factor", type=float, help="how many times faster")
    parser.add_argument("--floor", type=float, default=5.0, help="shortest window, seconds")
    args = parser.parse_args()
    document = scale_rules(yaml.safe_load(sys.stdin), args.factor, args.floor)
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False, width=1000))


if __name__ == "__main__":
    main()
