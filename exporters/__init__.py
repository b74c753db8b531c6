"""Exporters: Snapshots in, metric families out (prometheus-client)."""
