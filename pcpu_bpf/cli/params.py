"""Option types the commands share."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

# A day: longer intervals are typing mistakes, and time.sleep() overflows past ~292 years.
MAX_SECONDS = 86_400.0


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, object]
else:  # click 8.2 made ParamType generic; Debian's python3-click (8.1) is not subscriptable
    _ParamType = click.ParamType


class Seconds(_ParamType):
    """A finite number of seconds in (0, MAX_SECONDS], or [0, ...] with ``zero_ok``."""

    name = "seconds"

    def __init__(self, *, zero_ok: bool = False) -> None:
        self.zero_ok = zero_ok

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            seconds = value
        else:
            try:
                seconds = float(str(value))
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low = "0 or more" if self.zero_ok else "more than 0"
        if (
            not math.isfinite(seconds)
            or seconds > MAX_SECONDS
            or seconds < 0
            or (seconds == 0 and not self.zero_ok)
        ):
            self.fail(
                f"must be {low} and at most {MAX_SECONDS:.0f} seconds, got {value!r}", param, ctx
            )
        return seconds
