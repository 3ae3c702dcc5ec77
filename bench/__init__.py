"""Benchmarks: print figures, never assert on them."""
