"""The profiler's BPF C sources, shipped as package data and compiled on the host by bcc."""
