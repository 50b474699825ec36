"""GPU benchmarks for the Wan2.2-A14B worker (see BENCHMARKS.md)."""
