"""pcpu-top: views of two Snapshots, drawn as a terminal table or JSON."""
