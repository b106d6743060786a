"""Benchmarks and load tests; they print figures and write JSON."""
