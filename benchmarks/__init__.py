"""Benchmarks of gankd against a plain reference implementation: python -m benchmarks.run."""
