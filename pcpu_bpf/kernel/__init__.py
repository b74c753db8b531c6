"""What the kernel itself reports: debugfs percpu_stats, /proc and /sys files."""
