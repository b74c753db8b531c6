"""The one interface every data source implements (shape of httpx's BaseTransport)."""

from __future__ import annotations

from types import TracebackType

from pcpu_bpf.model.snapshot import Snapshot


class Backend:
    """A source of Snapshots: the live kernel, the simulator, or a running daemon.

    Usage::

        with open_backend("sim", BackendOptions(scenario="leak")) as backend:
            before = backend.snapshot()
            ...
            after = backend.snapshot()   # counters are cumulative since start

    `snapshot()` is cheap and has no side effects on what is counted: nothing is ever
    cleared, so Prometheus counters stay monotonic and rates are differences.
    """

    name: str = "base"
    # What the numbers cover, for a person: pcpu-top prints it when it starts.
    banner: str = "Tracing percpu allocations... Hit Ctrl-C to end."
    # What began the counters of a fresh trace, as pcpu-top's header names it.
    start_event: str = "start"

    @property
    def label(self) -> str:
        """The source as a table header names it ("bpf", "sim (leak)", ...)."""
        return self.name

    def snapshot(self) -> Snapshot:
        """Everything counted since the backend started, plus current kernel stats."""
        raise NotImplementedError

    def expire_kernel_read(self) -> None:
        """The next snapshot reads the kernel anew, whatever the minimum read interval:
        for a probe of what the daemon can still read (with fewer capabilities)."""

    def started_at(self) -> float | None:
        """When the counters began, on the Snapshots' clock, if they began with this
        backend (a fresh trace); None when they began before it (a daemon's, an adopted
        pinned set). pcpu-top measures its first window from here."""
        return None

    def close(self) -> None:
        """Detach and release; safe to call twice."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
