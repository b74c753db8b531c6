"""Read a pcpu-bpf exposition back into a Snapshot, through the catalog's bindings.

Nothing here knows a family by name but the exporter's own: every catalog binding puts
its samples into a draft (nested dicts along its path), and the draft becomes a Snapshot
by the Snapshot's own field types. So what the collector writes, this reads, and a
Snapshot survives the trip in everything the exposition carries.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from exporters.catalog import (
    CATALOG,
    EXPORTER,
    HISTOGRAM,
    HISTOGRAM_BOUNDS,
    LATER_LABELS,
    Draft,
    Family,
    Histogram,
)
from pcpu_bpf.errors import PcpuError
from pcpu_bpf.model.snapshot import Snapshot

_SAMPLE_FAMILY: dict[str, Family] = {}
for _family in CATALOG:
    for _name in (_family.name, *_family.formerly):  # a daemon of an earlier version too
        if _family.kind == HISTOGRAM:
            for _suffix in ("_bucket", "_sum"):
                _SAMPLE_FAMILY[_name + _suffix] = _family
        elif _family.part != EXPORTER:
            _SAMPLE_FAMILY[_name] = _family


def read_exposition(text: str, timestamp: float) -> Snapshot:
    """Turn a pcpu-bpf exposition back into a Snapshot taken at ``timestamp``."""
    draft: Draft = {"timestamp": timestamp}
    seen_info = False
    try:
        for metric in text_string_to_metric_families(text):
            for sample in metric.samples:
                labels = dict(sample.labels)
                if sample.name == "pcpu_exporter_info":
                    seen_info = True
                    draft["backend"] = labels.get("backend", "unknown")
                    draft["kernel"] = labels.get("kernel", "unknown")
                elif sample.name == "pcpu_collector_success":
                    if not sample.value:
                        part = labels.get("collector", "")
                        errors = draft.setdefault("kernel_stats", {}).setdefault("errors", {})
                        errors[part] = "failed in the daemon"
                else:
                    _load(draft, sample.name, labels, float(sample.value))
    except (ValueError, KeyError) as exc:
        raise PcpuError(f"not a pcpu-bpf exposition: {exc}") from None
    if not seen_info:
        raise PcpuError("no pcpu_exporter_info in the exposition: not a pcpu-bpf daemon?")
    _histograms(draft)
    try:
        return typing.cast(Snapshot, _build(Snapshot, draft))
    except (TypeError, ValueError) as exc:
        raise PcpuError(f"an incomplete pcpu-bpf exposition: {exc}") from None


def _load(draft: Draft, name: str, labels: dict[str, str], value: float) -> None:
    family = _SAMPLE_FAMILY.get(name)
    if family is None:
        return  # process_*, python_*, or a family of a newer version: not ours to read
    binding = family.binding
    if isinstance(binding, Histogram):
        if name.endswith("_bucket"):
            binding.load_bucket(draft, labels["le"], value)
        else:
            binding.load(draft, (), value)
        return
    values = tuple(
        labels.get(label, "") if label in LATER_LABELS else labels[label] for label in family.labels
    )
    binding.load(draft, values, value)


def _histograms(draft: Draft) -> None:
    """Cumulative bucket samples -> SizeHistogram drafts (per-bucket counts)."""
    for family in CATALOG:
        if not isinstance(family.binding, Histogram):
            continue
        node: Any = draft
        for name in family.binding.path[:-1]:
            node = node.setdefault(name, {})
        raw = node.get(family.binding.path[-1])
        if raw is None:
            continue
        buckets: dict[float, float] = raw.get("buckets", {})
        if tuple(sorted(buckets)) != HISTOGRAM_BOUNDS:
            raise PcpuError(f"{family.name}: unexpected buckets {sorted(buckets)}")
        running = [buckets[b] for b in HISTOGRAM_BOUNDS]
        counts = [n - (running[i - 1] if i else 0) for i, n in enumerate(running)]
        node[family.binding.path[-1]] = {"counts": counts, "sum": raw.get("sum", 0)}


def _build(tp: Any, data: Any) -> Any:
    """``data`` (drafted dicts and floats) as an instance of the type hint ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if data is None else _build(inner[0], data)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _build(hints[f.name], data[f.name])
            for f in dataclasses.fields(tp)
            if f.init and f.name in data
        }
        return tp(**kwargs)
    if origin is Mapping or origin is dict:
        _, value_type = typing.get_args(tp)
        return {key: _build(value_type, value) for key, value in data.items()}
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        return tuple(_build(item_type, v) for v in data)
    if tp is int:
        return _int(data)
    if tp is bool:
        return bool(data)
    if tp is float or tp is str:
        return tp(data)
    raise TypeError(f"cannot read {tp!r} from an exposition")


def _int(value: float) -> int:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a count")
    return round(value)
