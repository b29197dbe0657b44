"""Benchmarks: one module per benchmark (see bench/README.md)."""
