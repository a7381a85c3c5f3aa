"""`trustfast.ops.sequence_nll`: the chunked path against the full-logits reference (float64),
precision in float32, per-sequence gradients, memory, and errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as fn

from trustfast.ops import select_backend
from trustfast.ops.sequence_nll import IGNORE_INDEX, sequence_nll, sequence_nll_reference
from trustfast.utils import peak_tensor_bytes


def _problem(b, t, h, v, dtype=torch.float64, seed=0, bias=False):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=gen, dtype=dtype)
    weight = torch.randn(v, h, generator=gen, dtype=dtype) / h ** 0.5
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, t // 2] = IGNORE_INDEX
    labels[-1, -1] = v - 1  # the last vocab entry: the edge of the last chunk of classes
    extra = torch.randn(v, generator=gen, dtype=dtype) if bias else None
    return hidden, weight, labels, extra


@pytest.mark.parametrize("b, t, h, v, chunk", [
    (1, 1, 8, 1000, 4), (2, 2, 8, 1000, 1), (2, 129, 16, 1000, 50), (1, 33, 8, 32003, 7),
    (3, 17, 12, 77, 1024),
])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference_float64(b, t, h, v, chunk, bias):
    hidden, weight, labels, extra = _problem(b, t, h, v, bias=bias)
    leaves = [x.clone().requires_grad_() for x in (hidden, weight) + ((extra,) if bias else ())]
    got = sequence_nll(leaves[0], leaves[1], labels, bias=leaves[2] if bias else None,
                       chunk=chunk)
    ref_leaves = [x.clone().requires_grad_() for x in leaves]
    want = sequence_nll_reference(ref_leaves[0], ref_leaves[1], labels,
                                  bias=ref_leaves[2] if bias else None)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # any upstream gradient per sequence (NPO / SimNPO weight sequences differently)
    gen = torch.Generator().manual_seed(1)
    w_sum, w_mean = (torch.randn(b, generator=gen, dtype=torch.float64) for _ in range(2))
    grads = torch.autograd.grad((got.sum * w_sum + got.mean * w_mean).sum(), leaves)
    ref = torch.autograd.grad((want.sum * w_sum + want.mean * w_mean).sum(), ref_leaves)
    for g, w in zip(grads, ref):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_ignored_tokens_and_empty_sequences():
    hidden, weight, labels, _ = _problem(2, 6, 8, 50)
    labels[1] = IGNORE_INDEX  # a sequence with nothing to predict
    out = sequence_nll(hidden, weight, labels, chunk=3)
    assert out.tokens.tolist() == [4, 0]  # 5 predicted positions, one ignored; none
    assert out.sum[1] == 0 and out.mean[1] == 0
    # the unshifted convention: every position is scored against its own label
    flat = sequence_nll(hidden, weight, labels, shift=False)
    logits = hidden @ weight.T
    want = fn.cross_entropy(logits[0], labels[0], ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(flat.sum[0], want)


def test_mean_matches_cross_entropy_loss_of_hf_convention():
    """mean over equal-length sequences == cross_entropy of the shifted logits (HF's loss)."""
    hidden, weight, labels, _ = _problem(3, 10, 8, 40)
    labels[0, 5] = 7  # no ignored tokens: HF averages over all predicted tokens
    logits = hidden @ weight.T
    hf = fn.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(sequence_nll(hidden, weight, labels).mean.mean(), hf)


def test_float32_error_at_most_twice_torch():
    hidden, weight, labels, _ = _problem(2, 65, 32, 3001)
    want = sequence_nll_reference(hidden, weight, labels).sum
    h32, w32 = hidden.float(), weight.float()
    got = sequence_nll(h32, w32, labels, chunk=16).sum
    torch_err = (sequence_nll_reference(h32, w32, labels).sum.double() - want).abs().max()
    err = (got.double() - want).abs().max()
    assert err <= max(2 * torch_err, 1e-6 * want.abs().max()), (err, torch_err)


def test_peak_memory_is_a_fraction_of_the_logits_path(one_intra_op_thread):
    """vocab 32k, 512 tokens: the logits path holds the float32 logits and their softmax
    (64 MB each); the chunked path holds a chunk of them."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 512, 64, generator=gen, requires_grad=True)
    weight = (torch.randn(32000, 64, generator=gen) / 8).requires_grad_()
    labels = torch.randint(0, 32000, (1, 512), generator=gen)

    def ours():
        sequence_nll(hidden, weight, labels, chunk=64).sum.sum().backward()

    def logits_path():
        logits = hidden[:, :-1] @ weight.T
        fn.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum").backward()

    assert peak_tensor_bytes(ours) <= 0.25 * peak_tensor_bytes(logits_path)


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"hidden": torch.zeros(2, 3)}, ValueError, "hidden"),
    ({"hidden": torch.zeros(2, 3, 4, dtype=torch.int64)}, TypeError, "hidden"),
    ({"lm_head_weight": torch.zeros(5, 7)}, ValueError, "hidden size"),
    ({"lm_head_weight": torch.zeros(5, 4, dtype=torch.float64)}, TypeError, "weight"),
    ({"labels": torch.zeros(2, 3)}, TypeError, "labels"),
    ({"labels": torch.zeros(2, 4, dtype=torch.int64)}, ValueError, "labels"),
    ({"bias": torch.zeros(4)}, ValueError, "bias"),
    ({"chunk": 0}, ValueError, "chunk"),
    ({"chunk": 2.0}, TypeError, "chunk"),
    ({"bias": [0.0] * 5}, TypeError, "bias"),
    ({"hidden": torch.full((2, 3, 4), float("nan"))}, ValueError, "hidden must be finite"),
    ({"lm_head_weight": torch.full((5, 4), float("inf"))}, ValueError,
     "lm_head_weight must be finite"),
    ({"bias": torch.full((5,), float("nan"))}, ValueError, "bias must be finite"),
    ({"hidden": torch.zeros(2, 3, 4, device="meta"), "lm_head_weight":
      torch.zeros(5, 4, device="meta"), "labels": torch.zeros(2, 3, dtype=torch.int64,
                                                              device="meta")},
     ValueError, "meta"),
])
def test_errors_name_the_argument(kwargs, error, pattern):
    args = {"hidden": torch.zeros(2, 3, 4), "lm_head_weight": torch.zeros(5, 4),
            "labels": torch.zeros(2, 3, dtype=torch.int64)}
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k in ("bias", "chunk")}
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        sequence_nll(args["hidden"], args["lm_head_weight"], args["labels"], **extra)


def test_cpu_runs_the_torch_path():
    assert select_backend("sequence_nll", torch.device("cpu")) == "torch"


def test_out_of_range_labels_raise():
    hidden, weight, labels, _ = _problem(1, 4, 8, 10)
    labels[0, 2] = 10
    with pytest.raises(ValueError, match="labels must be token ids"):
        sequence_nll(hidden, weight, labels)


def test_validate_false_lets_hot_loops_skip_the_finiteness_check():
    hidden = torch.zeros(1, 3, 4)
    hidden[0, 0, 0] = float("nan")
    out = sequence_nll(hidden, torch.zeros(5, 4), torch.zeros(1, 3, dtype=torch.int64),
                       validate=False)
    assert torch.isnan(out.sum).all()  # documented: unchecked inputs, unchecked outputs
