"""The exporter daemon: HTTP /metrics over a Backend, and its life under systemd."""
