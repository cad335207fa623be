"""Benchmark measurements behind `python -m vishwamai.bench`; each returns data, never prints."""
