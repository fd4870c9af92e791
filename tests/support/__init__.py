"""Helpers shared by the test-suite and the benchmarks (SeaweedFS server, processes)."""
