"""Benchmarks behind `ksh bench`."""
