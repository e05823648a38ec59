"""Simulation for the demo, the tests and the benchmarks: a development broker and simulated
readers that sign scans with the real protocol code."""
