"""Benchmark harness shared by `trustfast bench`, `benchmarks/test_*.py` and `gpu_suite.py`.

One module per op (masked_update, pgd, attention, sequence_nll, hvp) and per end-to-end method
(llm_memory, watermark_attack), each with the same interface (`checks`, `timings`: see
`registry.py`), on one shared runner (`timing.py`: median time, peak memory, the copy and matmul
floors) and one correctness rule (`judge.py`). Every fused op is timed next to its peers (named
torch implementations) in the same process, and next to its floor measured on the same device.
"""
