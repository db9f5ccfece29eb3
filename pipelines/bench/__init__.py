"""Benchmarks and the end-to-end dataset runs they share."""
