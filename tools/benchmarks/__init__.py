"""Benchmarks run by tools/bench.py: one module per NAME, each with run(args) -> dict."""
