"""Benchmarks of rasteret-pipelines; run them from the repository root (see README.md)."""
