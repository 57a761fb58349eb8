"""Benchmark tooling: step and epoch timing, the double-backprop profiler."""
