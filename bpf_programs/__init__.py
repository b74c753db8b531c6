"""BPF C sources, compiled by bcc at load time; installed as pcpu_bpf.bpf_programs."""
