"""Exporters that turn Snapshots into metrics; installed as pcpu_bpf.exporters."""
