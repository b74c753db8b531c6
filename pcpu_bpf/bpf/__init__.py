"""The live side: tracepoint formats, compiling and loading the BPF programs, their maps."""
