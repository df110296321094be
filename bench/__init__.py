"""Benchmarks: `make bench`. Results: bench/results/latest.json and docs/benchmarks.md."""
