"""pytest-benchmark: `sequence_nll` (chunked, never the whole logits) vs the logits path (hidden @
W^T, then cross_entropy), forward + backward, 2,048 tokens, hidden 256, vocab 32k and 128k,
float32 on the CPU: time and peak tensor memory (`trustfast.utils.peak_tensor_bytes`). Goals of
the LLM
issue: peak memory <= 25 % of the logits path, time within 1.3x."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn import functional as fn

from trustfast._bench.timing import intra_op_threads, loadavg
from trustfast.ops.sequence_nll import sequence_nll
from trustfast.utils import peak_tensor_bytes

TOKENS, HIDDEN = 2048, 256
THREADS = 2
OURS = "trustfast sequence_nll (chunked)"
PEER = "logits + cross_entropy"


@functools.lru_cache(maxsize=2)
def _problem(vocab: int):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, TOKENS + 1, HIDDEN, generator=gen).requires_grad_()
    weight = (torch.randn(vocab, HIDDEN, generator=gen) / HIDDEN ** 0.5).requires_grad_()
    labels = torch.randint(0, vocab, (1, TOKENS + 1), generator=gen)
    return hidden, weight, labels


def _ours(hidden, weight, labels):
    sequence_nll(hidden, weight, labels).sum.sum().backward()


def _peer(hidden, weight, labels):
    logits = hidden[:, :-1] @ weight.T
    fn.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum").backward()


@pytest.mark.parametrize("vocab", [32_000, 128_000])
@pytest.mark.parametrize("variant", [OURS, PEER])
def test_sequence_nll_cpu(benchmark, variant, vocab):
    hidden, weight, labels = _problem(vocab)
    run = {OURS: _ours, PEER: _peer}[variant]
    with intra_op_threads(THREADS):
        run(hidden, weight, labels)  # warm-up
        peak = peak_tensor_bytes(lambda: run(hidden, weight, labels))
        benchmark.group = f"sequence_nll cpu fwd+bwd V={vocab}"
        benchmark.extra_info.update(bench="sequence_nll", variant=variant, vocab=vocab,
                                    tokens=TOKENS, hidden=HIDDEN, peak_tensor_mb=peak / 2**20,
                                    threads=THREADS, loadavg=loadavg())
        benchmark.pedantic(run, args=(hidden, weight, labels), rounds=3, warmup_rounds=0)
