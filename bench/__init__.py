"""The bench: `make bench` / `make bench-quick` (see BENCHMARKS.md)."""
