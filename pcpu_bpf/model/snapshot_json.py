"""A Snapshot as plain JSON-ready data (for `--json` outputs)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pcpu_bpf.model.chunk_map import ChunkMap
from pcpu_bpf.model.layout import SIZE_BUCKETS
from pcpu_bpf.model.snapshot import SizeHistogram, Snapshot


def _histogram(h: SizeHistogram) -> dict[str, Any]:
    bounds = [str(b) for b in SIZE_BUCKETS] + ["+Inf"]
    return {"buckets": dict(zip(bounds, h.counts, strict=True)), "sum": h.sum, "count": h.count}


def _flag(b: bool) -> str:
    return "true" if b else "false"


def snapshot_to_dict(s: Snapshot) -> dict[str, Any]:
    """Everything in the Snapshot, with label values as the metrics spell them."""
    out: dict[str, Any] = {
        "backend": s.backend,
        "kernel": s.kernel,
        "timestamp": s.timestamp,
        "sites": [
            {
                "call_site": k.call_site,
                "atomic": _flag(k.atomic),
                "reserved": _flag(k.reserved),
                **dataclasses.asdict(v),
            }
            for k, v in sorted(s.sites.items())
        ],
        "untracked_frees": s.untracked_frees,
        "size_histogram": _histogram(s.size_histogram),
        "failures": [
            {"atomic": _flag(a), "reserved": _flag(r), "count": n}
            for (a, r), n in sorted(s.failures.items())
        ],
        "failed_size_histogram": _histogram(s.failed_size_histogram),
        "chunk_creations": s.chunk_creations,
        "chunk_destructions": s.chunk_destructions,
        "dropped": dict(s.dropped),
        "kernel_stats": None,
        "fields_available": None,
        "programs": None,
        "maps": None,
        "tracking_start_time": s.tracking_start_time,
        "profiler_percpu_bytes": s.profiler_percpu_bytes,
        "breakdown": None,
        "ages": None,
        "chunk_map": None,
    }
    if s.breakdown is not None:
        b = s.breakdown
        out["breakdown"] = {
            "parts": dict(b.parts),
            "explained_share": b.explained_share,
            "violations": list(b.violations),
            "settled": b.settled,
        }
    if s.ages is not None:
        out["ages"] = {
            "oldest_seconds": [
                {
                    "call_site": k.call_site,
                    "atomic": _flag(k.atomic),
                    "reserved": _flag(k.reserved),
                    "seconds": v,
                }
                for k, v in sorted(s.ages.oldest_seconds.items())
            ],
            "bytes_by_age": [
                {
                    "call_site": k.call_site,
                    "atomic": _flag(k.atomic),
                    "reserved": _flag(k.reserved),
                    "age": k.age,
                    "bytes": v,
                }
                for k, v in sorted(s.ages.bytes_by_age.items())
            ],
        }
    if s.kernel_stats is not None:
        ks = s.kernel_stats
        out["kernel_stats"] = {
            "percpu_stats": dataclasses.asdict(ks.percpu_stats) if ks.percpu_stats else None,
            "meminfo_percpu_bytes": ks.meminfo_percpu_bytes,
            "errors": dict(ks.errors),
        }
    if s.fields_available is not None:
        out["fields_available"] = [
            {"event": e, "field": f, "available": ok}
            for (e, f), ok in sorted(s.fields_available.items())
        ]
    if s.programs is not None:
        out["programs"] = {n: dataclasses.asdict(p) for n, p in sorted(s.programs.items())}
    if s.maps is not None:
        out["maps"] = {n: dataclasses.asdict(m) for n, m in sorted(s.maps.items())}
    if s.chunk_map is not None:
        out["chunk_map"] = chunk_map_to_dict(s.chunk_map)
    return out


def chunk_map_to_dict(m: ChunkMap) -> dict[str, Any]:
    """A ChunkMap as JSON-ready data, with each chunk's fragmentation."""
    return {
        "note": m.note,
        "chunks": [
            {
                **dataclasses.asdict(c),
                "base_addr": None if c.base_addr is None else f"{c.base_addr:#x}",
                "fragmentation": c.fragmentation,
            }
            for c in m.chunks
        ],
    }
