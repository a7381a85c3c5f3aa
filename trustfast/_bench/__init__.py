"""Benchmark harness shared by `trustfast bench`, `benchmarks/test_*.py` and `gpu_suite.py`.

Every fused op is timed next to its peers (named torch implementations) in the same process, and
next to its floor (a copy of the same number of bytes, measured on the same device).
"""
