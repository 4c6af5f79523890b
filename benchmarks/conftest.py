"""Benchmarks run on a shipped organism: `pytest benchmarks/ --benchmark-json reports/benchmarks.json`."""
