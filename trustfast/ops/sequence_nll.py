"""Per-sequence negative log-likelihood straight from the final hidden states.

    logits = hidden W^T (+ bias),  nll_t = logsumexp(logits_t) - logits_t[label_{t+1}]
    sequence_nll(...).sum[b] = sum_t nll_t over the sequence's non-ignored tokens

with the causal-LM shift of Hugging Face (position t predicts label t+1; `ignore_index` = -100
tokens count nothing), computed a chunk of tokens at a time, so the (batch x tokens x vocab)
logits are never held: a chunk's logits live for one step (forward) and are recomputed in the
backward. At vocab 128k and 2k tokens the logits alone would be 1 GB in float32.

Backends: Triton (`trustfast.kernels.sequence_nll`, CUDA) and a chunked torch path (CPU, and
calls with a bias or float64); `sequence_nll_reference` is the specification. The backward takes
any upstream gradient per sequence, so per-sequence weights (NPO, SimNPO) work.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as fn

from trustfast.checks import FLOATING, check_tensor
from trustfast.ops._dispatch import dtypes, register_op, resolve_backend, without

# What the Triton kernels take; every other call runs the torch path (auto) or raises (forced).
register_op("sequence_nll", ("torch", "triton"), constraints={"triton": (
    dtypes(torch.float16, torch.bfloat16, torch.float32),
    without("has_bias", "bias"),
)})

IGNORE_INDEX = -100
# Tokens per chunk of the torch path: the chunk's float32 logits are CHUNK x V (at V = 128k:
# 256 tokens -> 128 MB, against 1 GB for 2k tokens whole, and the logits path also keeps their
# softmax for the backward). Each chunk is still a (256 x H) @ (H x V) matmul.
CHUNK = 256


class SequenceNLL(NamedTuple):
    """Per-sequence summed NLL, mean NLL (sum / tokens; 0 for a sequence with no tokens) and the
    number of predicted (non-ignored) tokens."""

    sum: torch.Tensor
    mean: torch.Tensor
    tokens: torch.Tensor


def _shift(hidden: torch.Tensor, labels: torch.Tensor, shift: bool):
    if shift:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    return hidden, labels


def _aggregate(nll: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> SequenceNLL:
    keep = labels != ignore_index
    total = (nll * keep).sum(-1)
    tokens = keep.sum(-1)
    return SequenceNLL(total, total / tokens.clamp_min(1), tokens)


def sequence_nll_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           bias: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                           shift: bool = True) -> SequenceNLL:
    """The specification: full logits, then `cross_entropy(reduction="none")` per token."""
    hidden, labels = _shift(hidden, labels, shift)
    logits = _chunk_logits(hidden, weight, bias)
    nll = fn.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none",
                           ignore_index=ignore_index).view(labels.shape)
    return _aggregate(nll, labels, ignore_index)


def _chunk_logits(h, weight, bias):
    dt = torch.float64 if h.dtype == torch.float64 else torch.float32
    return fn.linear(h, weight, bias).to(dt)


def _torch_forward(h, weight, bias, labels, ignore_index, chunk):
    """(nll, lse) per token, float32 (float64 for float64 inputs), chunk by chunk."""
    nlls, lses = [], []
    for start in range(0, max(h.shape[0], 1), chunk):
        hc, yc = h[start:start + chunk], labels[start:start + chunk]
        logits = _chunk_logits(hc, weight, bias)
        lse = torch.logsumexp(logits, dim=-1)
        keep = yc != ignore_index
        target = logits.gather(1, torch.where(keep, yc, 0).unsqueeze(1)).squeeze(1)
        nlls.append(torch.where(keep, lse - target, torch.zeros_like(lse)))
        lses.append(torch.where(keep, lse, torch.zeros_like(lse)))
    return torch.cat(nlls), torch.cat(lses)


def _torch_backward(h, weight, bias, labels, lse, grad, ignore_index, chunk):
    """d(sum_t grad_t nll_t) w.r.t. hidden, weight and bias, recomputing each chunk's logits."""
    dt = torch.float64 if h.dtype == torch.float64 else torch.float32
    grad_h = torch.empty_like(h)
    grad_w = torch.zeros(weight.shape, dtype=dt, device=weight.device)
    grad_b = torch.zeros(weight.shape[0], dtype=dt, device=weight.device) if bias is not None \
        else None
    for start in range(0, h.shape[0], chunk):
        hc, yc = h[start:start + chunk], labels[start:start + chunk]
        keep = yc != ignore_index
        logits = _chunk_logits(hc, weight, bias)
        dlogits = torch.exp(logits - lse[start:start + chunk].unsqueeze(1).to(dt))
        dlogits[keep.nonzero().squeeze(1), yc[keep]] -= 1
        dlogits *= (grad[start:start + chunk].to(dt) * keep).unsqueeze(1)
        grad_h[start:start + chunk] = (dlogits.to(weight.dtype) @ weight).to(h.dtype)
        grad_w += dlogits.transpose(0, 1) @ hc.to(dt)
        if grad_b is not None:
            grad_b += dlogits.sum(0)
    return grad_h, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token NLL of `h W^T + b` against labels; backward recomputes the logits by chunks."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, ignore_index, chunk, backend):
        if backend == "triton":
            from trustfast.kernels.sequence_nll import linear_cross_entropy_forward

            nll, lse = linear_cross_entropy_forward(h, weight, labels, ignore_index)
        else:
            nll, lse = _torch_forward(h, weight, bias, labels, ignore_index, chunk)
        ctx.save_for_backward(h, weight, bias, labels, lse)
        ctx.ignore_index, ctx.chunk, ctx.backend = ignore_index, chunk, backend
        return nll

    @staticmethod
    def backward(ctx, grad):
        h, weight, bias, labels, lse = ctx.saved_tensors
        if ctx.backend == "triton":
            from trustfast.kernels.sequence_nll import linear_cross_entropy_backward

            grad_h, grad_w = linear_cross_entropy_backward(h, weight, labels, lse,
                                                           grad.float().contiguous(),
                                                           ctx.ignore_index)
            grad_b = None
        else:
            grad_h, grad_w, grad_b = _torch_backward(h, weight, bias, labels, lse, grad,
                                                     ctx.ignore_index, ctx.chunk)
        return grad_h, grad_w, grad_b, None, None, None, None


def _validate(hidden, weight, labels, bias, chunk):
    check_tensor("hidden", hidden, dtypes=FLOATING, ndim=3,
                 hint="final hidden states (batch, tokens, hidden_size)")
    check_tensor("lm_head_weight", weight, dtypes=FLOATING, ndim=2, hint="(vocab, hidden_size)")
    if weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"lm_head_weight has hidden size {weight.shape[1]}, hidden "
                         f"{hidden.shape[2]}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"lm_head_weight is {weight.dtype}, hidden {hidden.dtype}: they must "
                        "match")
    check_tensor("labels", labels, dtypes=(torch.int64,), hint="token ids (batch, tokens)")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(hidden.shape[:2])} (batch, tokens), "
                         f"got {tuple(labels.shape)}")
    if len({hidden.device, weight.device, labels.device}) != 1:
        raise ValueError(f"hidden, lm_head_weight and labels must be on one device, got "
                         f"{hidden.device}, {weight.device}, {labels.device}")
    if hidden.device.type == "meta":
        raise ValueError("hidden is a meta tensor: sequence_nll needs tensors with data "
                         "(cpu or cuda)")
    if bias is not None:
        check_tensor("bias", bias)
        if bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype:
            raise ValueError(f"bias must be ({weight.shape[0]},) of {weight.dtype}, got "
                             f"{tuple(bias.shape)} {bias.dtype}")
        if bias.device != weight.device:
            raise ValueError(f"bias is on {bias.device}, lm_head_weight on {weight.device}")
    if isinstance(chunk, bool) or not isinstance(chunk, int):
        raise TypeError(f"chunk must be an int >= 1, got {chunk!r} ({type(chunk).__name__})")
    if chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")


def _checkable(t: torch.Tensor) -> bool:
    """Values can be read: not traced by torch.compile, not a torch.func wrapper."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():  # first: nothing else is traced
        return False
    from torch._C._functorch import is_functorch_wrapped_tensor

    return not is_functorch_wrapped_tensor(t)


def _check_values(hidden, weight, bias) -> None:
    """NaN/Inf in the hidden states or the head would make every loss NaN silently: one read
    of each (the head's V x H read is small next to the B T V H matmul it feeds)."""
    for name, t in (("hidden", hidden), ("lm_head_weight", weight), ("bias", bias)):
        if t is not None and _checkable(t):
            check_tensor(name, t.detach(), finite=True)


def _check_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Out-of-range ids would give NaN losses (Triton) or an index error deep in a chunk: one
    check (a host sync on CUDA, small next to the vocab matmuls) turns them into a clear error."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"labels must be token ids in [0, {vocab}) or ignore_index "
                         f"{ignore_index}; got {labels[bad][0].item()}")


def sequence_nll(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, *,
                 bias: torch.Tensor | None = None, chunk: int = CHUNK,
                 ignore_index: int = IGNORE_INDEX, shift: bool = True,
                 backend: str | None = None, validate: bool = True) -> SequenceNLL:
    """Per-sequence NLL of a causal LM from its final hidden states, never materializing the
    (batch x tokens x vocab) logits.

    Args:
        hidden: (B, T, H) final hidden states (after the last norm), e.g.
            `model.model(input_ids).last_hidden_state` for a Hugging Face Llama.
        lm_head_weight: (V, H), `model.lm_head.weight`; `bias` optional (V,).
        labels: (B, T) int64 token ids, `ignore_index` where no loss is wanted.
        chunk: tokens per chunk of the torch path.
        shift: position t predicts label t + 1 (Hugging Face's causal-LM convention).
        backend: "torch", "triton" or None (automatic: Triton for CUDA tensors, torch otherwise;
            TRUSTFAST_BACKEND overrides). A call with a bias or float64 runs the torch path;
            forcing "triton" on it raises BackendUnavailableError.
        validate: refuse NaN/Inf in hidden, lm_head_weight and bias with a ValueError naming
            the argument (default True; one read of each, a host sync on CUDA). Skipped for
            meta tensors, under torch.compile and inside torch.func transforms. Label ids are
            always checked.

    Returns `SequenceNLL(sum, mean, tokens)`, each (B,); sum and mean are differentiable.
    `mean.mean()` over sequences with equal token counts equals HF's `model(...).loss`.
    """
    _validate(hidden, lm_head_weight, labels, bias, chunk)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    for name, flag in (("shift", shift), ("validate", validate)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if validate:
        _check_values(hidden, lm_head_weight, bias)
    h, y = _shift(hidden, labels, shift)
    _check_labels(y, lm_head_weight.shape[0], ignore_index)
    chosen = resolve_backend("sequence_nll", backend, device=hidden.device, dtype=hidden.dtype,
                             has_bias=bias is not None)
    flat_h = h.reshape(-1, h.shape[-1])
    flat_y = y.reshape(-1)
    nll = _LinearCrossEntropy.apply(flat_h, lm_head_weight, bias, flat_y, ignore_index, chunk,
                                    chosen)
    return _aggregate(nll.view(y.shape), y, ignore_index)
