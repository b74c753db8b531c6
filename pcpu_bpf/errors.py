"""Exceptions raised by pcpu-bpf.

PcpuError                  root: the CLI turns any of these into a one-line error
├── BackendUnavailable     the bpf backend cannot run here: no bcc, no privileges,
│                          no tracefs, a missing tracepoint, no kernel headers
├── ProgramLoadError       bcc failed to compile or attach a program (carries bcc's text)
├── ScenarioError          unknown scenario or bad simulator parameters
├── StatsParseError        a percpu_stats or meminfo text that does not parse
├── RecordingError         a recording or tracefs trace that does not parse, or that
│                          contradicts itself (names the line)
├── ListenError            the daemon cannot bind its listen address
└── WebConfigError         a --web-config file (TLS, basic auth) that cannot be used
"""

from __future__ import annotations


class PcpuError(Exception):
    """Root of every error pcpu-bpf raises on purpose."""


class BackendUnavailable(PcpuError):
    """The requested backend cannot run on this machine; the message says why and the fix."""


class ProgramLoadError(PcpuError):
    """A BPF program failed to compile, load or attach."""


class ScenarioError(PcpuError):
    """An unknown scenario or an illegal simulator parameter."""


class StatsParseError(PcpuError):
    """Kernel statistics text that does not parse; the message names the line."""


class RecordingError(PcpuError):
    """A recording or trace that cannot be read or replayed; the message names the line."""


class ListenError(PcpuError):
    """The daemon could not listen on the requested address."""


class WebConfigError(PcpuError):
    """A web configuration file (TLS and basic auth) that is malformed or names unusable files."""
