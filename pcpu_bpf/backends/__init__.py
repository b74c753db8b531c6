"""Backends: where Snapshots come from. `open_backend` is the one place that chooses.

Three sources: ``bpf`` (the live kernel), ``sim`` (the simulator) and ``remote`` (a
running daemon's /metrics), plus ``auto``, the policy pcpu-top uses: the live kernel when
it can run here, else the simulator, saying why. Every command opens its source here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from pcpu_bpf.backends.base import Backend
from pcpu_bpf.errors import BackendUnavailable, PcpuError, ProgramLoadError

BACKENDS = ("bpf", "sim", "remote")
AUTO = "auto"
DEFAULT_SCENARIO = "steady"

__all__ = ["AUTO", "BACKENDS", "Backend", "BackendOptions", "Constructor", "open_backend"]


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """Every option a backend takes; None leaves the backend's own default."""

    live_capacity: int | None = None
    site_capacity: int | None = None
    bpf_dir: str | None = None
    pin_dir: str | None = None  # bpf: adopt or pin the set here (the daemon's)
    scenario: str | None = None
    seed: int | None = None
    url: str | None = None
    min_read_interval: float | None = None
    min_age: float | None = None  # bpf, sim: also count what is at least this old
    max_bpf_maps: int | None = None  # bpf: series of pcpu_bpf_map_percpu_bytes before (other)
    max_cgroups: int | None = None  # bpf: cgroups with series of their own
    owners: bool | None = None  # bpf: find the owner behind the known helpers (stacks)
    helpers: tuple[str, ...] | None = None  # bpf: helpers beyond DEFAULT_HELPERS

    def given(self) -> dict[str, Any]:
        """The options that were set, by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


# Which options each backend takes.
TAKES: dict[str, tuple[str, ...]] = {
    "bpf": (
        "live_capacity",
        "site_capacity",
        "bpf_dir",
        "min_read_interval",
        "pin_dir",
        "min_age",
        "max_bpf_maps",
        "max_cgroups",
        "owners",
        "helpers",
    ),
    "sim": ("scenario", "seed", "live_capacity", "site_capacity", "min_age"),
    "remote": ("url",),
}


def ignored_options(name: str, options: BackendOptions) -> list[str]:
    """Options that were set but do not apply to backend ``name``."""
    takes = TAKES.get(name, ())
    return [option for option in options.given() if option not in takes]


def _bpf(options: BackendOptions) -> Backend:
    from pcpu_bpf.backends.bpf import BpfBackend

    return BpfBackend(**_taken("bpf", options))


def _sim(options: BackendOptions) -> Backend:
    from pcpu_bpf.backends.sim import SimBackend

    return SimBackend(**_taken("sim", options))


def _remote(options: BackendOptions) -> Backend:
    from pcpu_bpf.backends.remote import DEFAULT_URL, RemoteBackend

    return RemoteBackend(options.url or DEFAULT_URL)


def _taken(name: str, options: BackendOptions) -> dict[str, Any]:
    return {k: v for k, v in options.given().items() if k in TAKES[name]}


Constructor = Callable[[BackendOptions], Backend]
CONSTRUCTORS: Mapping[str, Constructor] = {"bpf": _bpf, "sim": _sim, "remote": _remote}


def open_backend(
    name: str,
    options: BackendOptions | None = None,
    *,
    on_fallback: Callable[[str], None] | None = None,
    constructors: Mapping[str, Constructor] = CONSTRUCTORS,
) -> Backend:
    """Start backend ``name`` (one of BACKENDS, or AUTO) with ``options``.

    AUTO: a named scenario asks for the simulator; otherwise the live kernel, and where
    BPF cannot run or load, the simulator, after telling ``on_fallback`` why in one line.
    """
    options = options or BackendOptions()
    if name == AUTO:
        return _open_auto(options, on_fallback, constructors)
    if name not in constructors:
        choices = ", ".join((*BACKENDS, AUTO))
        raise PcpuError(f"unknown backend {name!r}; choose one of: {choices}")
    return constructors[name](options)


def _open_auto(
    options: BackendOptions,
    on_fallback: Callable[[str], None] | None,
    constructors: Mapping[str, Constructor],
) -> Backend:
    if options.scenario is not None:
        return constructors["sim"](options)
    try:
        return constructors["bpf"](options)
    except (BackendUnavailable, ProgramLoadError) as exc:
        if on_fallback is not None:
            on_fallback(
                f"{bpf_failure(exc)} ({first_line(exc)}); showing the simulator "
                f"(scenario {options.scenario or DEFAULT_SCENARIO})"
            )
        return constructors["sim"](options)


def bpf_failure(exc: BackendUnavailable | ProgramLoadError) -> str:
    """What kind of failure kept the live backend from starting, in two words or three."""
    return "BPF unavailable" if isinstance(exc, BackendUnavailable) else "BPF load failed"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (bcc's errors carry pages of compiler output)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
