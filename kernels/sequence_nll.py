"""Triton kernels of `sequence_nll`: fused linear + cross-entropy, the per-token NLL of an LM head
without the (N x V) logits.

Spec (`trustfast/ops/sequence_nll.py`): for hidden states h (N, Hd), the LM head W (V, Hd) (the
nn.Linear layout) and labels y (N,), logits_i = h_i W^T in float32 from the storage dtype,
lse_i = logsumexp_v(logits_iv) (natural log) and nll_i = lse_i - logits_{i, y_i}; both are 0 for
tokens whose label is ignore_index. Nothing of size N x V is ever stored:
  - forward: one program per BLOCK_M tokens loops over BLOCK_V-wide vocab tiles; each tile of
    logits is a K-loop of tl.dot(h_tile, w_tile^T) over Hd, folded into an online logsumexp
    (running max, sum rescaled by exp(m_old - m_new)) and the target logit picked out of the tile
    that holds the label, as in Cut Cross-Entropy (Wijmans et al., 2024);
  - backward: dlogits_iv = g_i (softmax_iv - 1[v = y_i]) from the saved lse, recomputed tile by
    tile in two kernels: one program per token block accumulates grad_h = dlogits W, one per vocab
    block accumulates grad_weight = dlogits^T h. No atomics, so the gradients are deterministic.

Cost: the forward is 2 N V Hd FLOPs (one logits matmul). The backward recomputes the logits in
each of its two kernels and does the two gradient matmuls: 8 N V Hd, 4x the forward (twice the
4 N V Hd of a backward that keeps its logits). That buys memory: the forward stores 2 N floats,
the backward only the gradients' float32 accumulators (below).

Neither gradient's row block (BLOCK x Hd, 1 MB in float32 at BLOCK = 64, Hd = 4096) fits on chip,
so each program accumulates its own rows in a float32 buffer in global memory, read-modify-write
once per tile of the reduced dimension, Hd in BLOCK_K chunks; only that program touches those
rows, so the result does not depend on scheduling. That traffic (8 bytes per Hd element per
tile, as much as the W tiles' at BLOCK = 64) is the first suspect if a GPU run is memory-bound;
larger BLOCK_V / BLOCK_M halve it. The buffers are the outputs for float32
inputs; for 16-bit inputs they are float32 scratch of N x Hd and V x Hd (the latter twice the size
of a bf16 LM head), cast to the storage dtype at the end.

Inputs may have any strides (slices of (B, T, Hd) hidden states, a transposed tied embedding):
each tensor's strides are passed, and Triton specializes the unit ones. Dot operands keep the
storage dtype (fp16/bf16 tensor cores) with float32 accumulation; the softmax and dlogits are
float32, and dlogits is rounded to the storage dtype before its dots, as FlashAttention rounds P
and dS. float32 dots use IEEE precision unless torch.backends.cuda.matmul.allow_tf32 is set, as
for torch's own fp32 matmuls. Under TRITON_INTERPRET=1 bfloat16 tiles are upcast to float32 right
after each load (the interpreter's bf16 arithmetic and dots are wrong).

A label that is neither ignore_index nor in [0, V) gives nll = NaN (lse stays finite) and NaN in
that token's grad_h row and in grad_weight: checking the range on the host would cost a device
sync per call, so `trustfast.ops` validates labels where it must.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
IGNORE_INDEX = -100
LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _config(backward: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_V, BLOCK_K, num_warps, num_stages). Untuned until a GPU run of
    benchmarks/gpu_suite.py."""
    if _interpreted():
        # 16 is the smallest tile tl.dot accepts: the tests' small shapes then span several vocab,
        # token and Hd tiles, which exercises the online logsumexp and every ragged edge.
        return 16, 16, 16, 4, 1
    # A 64 x 128 float32 logits tile over 8 warps is 32 registers a thread; a K stage of bf16
    # h and W tiles is (64 + 128) * 64 * 2 = 24 KB (48 KB in float32), so three stages fit the
    # 228 KB of shared memory of an H100/H200. The backward adds the gradient tiles: two stages.
    if backward:
        return 64, 128, 64, 8, 2
    return 64, 128, 64, 8, 3


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for fp16 / bf16 operands


@triton.jit
def _load_tile(ptr, rows, n_rows, s_row, k, hidden, s_k, UPCAST: tl.constexpr):
    """rows x k of a (n_rows, hidden) matrix; padded rows and columns read 0."""
    offs = rows[:, None].to(tl.int64) * s_row + k[None, :].to(tl.int64) * s_k
    x = tl.load(ptr + offs, mask=(rows[:, None] < n_rows) & (k[None, :] < hidden), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, vocab, hidden, s_hn, s_hk, s_wv, s_wk,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """float32 h[rows] W[cols]^T (BLOCK_M, BLOCK_V); padded rows and columns are 0."""
    acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    for start_k in range(0, hidden, BLOCK_K):
        k = start_k + tl.arange(0, BLOCK_K)
        h = _load_tile(h_ptr, rows, n_tokens, s_hn, k, hidden, s_hk, UPCAST)
        w = _load_tile(w_ptr, cols, vocab, s_wv, k, hidden, s_wk, UPCAST)
        acc = tl.dot(h, tl.trans(w), acc=acc, input_precision=PRECISION)
    return acc


@triton.jit
def _scored(labels, rows, n_tokens, vocab, ignore_index):
    """(active, in_range): active rows are real tokens with a label to score; in_range says
    whether that label is in [0, V) (else their nll and gradients are NaN)."""
    active = (rows < n_tokens) & (labels != ignore_index)
    return active, (labels >= 0) & (labels < vocab)


@triton.jit
def _dlogits_tile(logits, lse, labels, g, active, cols, vocab):
    """g_i (softmax_iv - 1[v = y_i]) in float32, 0 on inactive rows and padded columns. The
    where (not a product with g = 0) keeps an ignored row's exp(logits - 0) = inf out of it."""
    p = tl.exp2((logits - lse[:, None]) * _LOG2E)
    onehot = (cols[None, :] == labels[:, None]).to(tl.float32)
    keep = active[:, None] & (cols[None, :] < vocab)
    return tl.where(keep, g[:, None] * (p - onehot), 0.0)


@triton.jit
def _linear_cross_entropy_forward_kernel(
    h_ptr, w_ptr, labels_ptr, nll_ptr, lse_ptr,
    s_hn, s_hk, s_wv, s_wk, s_lab,
    n_tokens, vocab, hidden, ignore_index,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    labels = tl.load(labels_ptr + rows * s_lab, mask=rows < n_tokens, other=ignore_index)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    target = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_v in range(0, vocab, BLOCK_V):
        cols = start_v + tl.arange(0, BLOCK_V)
        logits = _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, vocab, hidden, s_hn, s_hk,
                              s_wv, s_wk, UPCAST, PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], logits, 0.0), 1)
        z = tl.where(cols[None, :] < vocab, logits, float("-inf"))
        # The first tile holds column 0, so m_new is finite from then on. Subtracting before
        # scaling by log2(e) keeps the exponent's rounding relative to logit - max, not to the
        # logit (with logits ~ 30: 1e-6 relative error in fp32 gradients instead of 3e-6).
        m_new = tl.maximum(m_i, tl.max(z, 1))
        p = tl.exp2((z - m_new[:, None]) * _LOG2E)
        l_i = l_i * tl.exp2((m_i - m_new) * _LOG2E) + tl.sum(p, 1)
        m_i = m_new

    lse = m_i + tl.log2(l_i) * _LN2
    active, in_range = _scored(labels, rows, n_tokens, vocab, ignore_index)
    nll = tl.where(active, tl.where(in_range, lse - target, float("nan")), 0.0)
    tl.store(nll_ptr + rows, nll, mask=rows < n_tokens)
    tl.store(lse_ptr + rows, tl.where(active, lse, 0.0), mask=rows < n_tokens)


@triton.jit
def _linear_cross_entropy_grad_h_kernel(
    h_ptr, w_ptr, labels_ptr, lse_ptr, grad_ptr, gh_ptr,
    s_hn, s_hk, s_wv, s_wk, s_lab, s_lse, s_g, s_ghn,
    n_tokens, vocab, hidden, ignore_index,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_h[rows] = dlogits[rows, :] W, accumulated in the zeroed float32 buffer gh."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_rows = rows < n_tokens
    labels = tl.load(labels_ptr + rows * s_lab, mask=in_rows, other=ignore_index)
    lse = tl.load(lse_ptr + rows * s_lse, mask=in_rows, other=0.0)
    grad = tl.load(grad_ptr + rows * s_g, mask=in_rows, other=0.0)
    active, in_range = _scored(labels, rows, n_tokens, vocab, ignore_index)
    g = tl.where(in_range, grad, float("nan"))

    for start_v in range(0, vocab, BLOCK_V):
        cols = start_v + tl.arange(0, BLOCK_V)
        logits = _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, vocab, hidden, s_hn, s_hk,
                              s_wv, s_wk, UPCAST, PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
        dl = _dlogits_tile(logits, lse, labels, g, active, cols, vocab)
        for start_k in range(0, hidden, BLOCK_K):
            k = start_k + tl.arange(0, BLOCK_K)
            w = _load_tile(w_ptr, cols, vocab, s_wv, k, hidden, s_wk, UPCAST)
            offs = rows[:, None] * s_ghn + k[None, :]
            mask = in_rows[:, None] & (k[None, :] < hidden)
            acc = tl.load(gh_ptr + offs, mask=mask, other=0.0)
            acc = tl.dot(dl.to(w.dtype), w, acc=acc, input_precision=PRECISION)
            tl.store(gh_ptr + offs, acc, mask=mask)
        # The next vocab tile reloads these rows: make every thread's stores visible first.
        tl.debug_barrier()


@triton.jit
def _linear_cross_entropy_grad_w_kernel(
    h_ptr, w_ptr, labels_ptr, lse_ptr, grad_ptr, gw_ptr,
    s_hn, s_hk, s_wv, s_wk, s_lab, s_lse, s_g, s_gwv,
    n_tokens, vocab, hidden, ignore_index,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_weight[cols] = dlogits[:, cols]^T h, accumulated in the zeroed float32 buffer gw."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_cols = cols < vocab

    for start_m in range(0, n_tokens, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        in_rows = rows < n_tokens
        rows64 = rows.to(tl.int64)
        labels = tl.load(labels_ptr + rows64 * s_lab, mask=in_rows, other=ignore_index)
        lse = tl.load(lse_ptr + rows64 * s_lse, mask=in_rows, other=0.0)
        grad = tl.load(grad_ptr + rows64 * s_g, mask=in_rows, other=0.0)
        active, in_range = _scored(labels, rows, n_tokens, vocab, ignore_index)
        g = tl.where(in_range, grad, float("nan"))
        logits = _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, vocab, hidden, s_hn, s_hk,
                              s_wv, s_wk, UPCAST, PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
        dl_t = tl.trans(_dlogits_tile(logits, lse, labels, g, active, cols, vocab))
        for start_k in range(0, hidden, BLOCK_K):
            k = start_k + tl.arange(0, BLOCK_K)
            h = _load_tile(h_ptr, rows, n_tokens, s_hn, k, hidden, s_hk, UPCAST)
            offs = cols[:, None] * s_gwv + k[None, :]
            mask = in_cols[:, None] & (k[None, :] < hidden)
            acc = tl.load(gw_ptr + offs, mask=mask, other=0.0)
            acc = tl.dot(dl_t.to(h.dtype), h, acc=acc, input_precision=PRECISION)
            tl.store(gw_ptr + offs, acc, mask=mask)
        tl.debug_barrier()


def _where(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"


def _check(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, int]:
    """Launcher-level checks (trustfast.ops validates the public op): returns N, V, Hd."""
    name = "linear_cross_entropy triton kernel"
    for arg, t in (("h", h), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if h.dtype not in DTYPES:
        raise TypeError(f"{name}: h must be float16, bfloat16 or float32, got {h.dtype}")
    if weight.dtype != h.dtype:
        raise TypeError(f"{name}: weight must have h's dtype {h.dtype}, got {weight.dtype}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name}: labels must be int64, got {labels.dtype}")
    if h.dim() != 2 or weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"{name}: h must be (N, Hd) and weight (V, Hd), got h {_where(h)}, "
                         f"weight {_where(weight)}")
    n_tokens, hidden = h.shape
    vocab = weight.shape[0]
    if vocab == 0:
        raise ValueError(f"{name}: weight has 0 rows: a softmax over an empty vocabulary is "
                         "undefined")
    if labels.shape != (n_tokens,):
        raise ValueError(f"{name}: labels must be ({n_tokens},), got {tuple(labels.shape)}")
    if weight.device != h.device or labels.device != h.device:
        raise ValueError(f"{name}: h, weight and labels must be on one device, got {h.device}, "
                         f"{weight.device}, {labels.device}")
    if h.device.type != "cuda" and not _interpreted():
        raise ValueError(f"{name}: needs CUDA tensors (or TRITON_INTERPRET=1), got {h.device}")
    return n_tokens, vocab, hidden


def _check_per_token(arg: str, t: torch.Tensor, h: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        raise TypeError(f"linear_cross_entropy triton kernel: {arg} must be a float32 tensor, "
                        f"got {getattr(t, 'dtype', type(t).__name__)}")
    if t.shape != (h.shape[0],) or t.device != h.device:
        raise ValueError(f"linear_cross_entropy triton kernel: {arg} must be ({h.shape[0]},) on "
                         f"{h.device}, got {_where(t)}")


def linear_cross_entropy_forward(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 ignore_index: int = IGNORE_INDEX
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, lse), float32 (N,): lse_i = logsumexp_v(h_i W^T) and nll_i = lse_i - h_i . W_{y_i}
    (cross-entropy of the LM head's logits), both 0 where labels == ignore_index.

    h (N, Hd) and weight (V, Hd) share a dtype (fp16, bf16, fp32) and may have any strides;
    labels (N,) int64. The (N, V) logits are never stored (Cut Cross-Entropy, Wijmans et al.,
    2024); cost 2 N V Hd FLOPs.
    """
    n_tokens, vocab, hidden = _check(h, weight, labels)
    nll = torch.empty(n_tokens, dtype=torch.float32, device=h.device)
    lse = torch.empty_like(nll)
    if n_tokens == 0:
        return nll, lse
    block_m, block_v, block_k, warps, stages = _config(backward=False)
    _linear_cross_entropy_forward_kernel[(triton.cdiv(n_tokens, block_m),)](
        h, weight, labels, nll, lse, *h.stride(), *weight.stride(), labels.stride(0),
        n_tokens, vocab, hidden, int(ignore_index),
        UPCAST=_interpreted() and h.dtype == torch.bfloat16, PRECISION=_dot_precision(h.dtype),
        BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return nll, lse


def linear_cross_entropy_backward(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                  lse: torch.Tensor, grad_nll: torch.Tensor,
                                  ignore_index: int = IGNORE_INDEX
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_h, grad_weight) of sum_i grad_nll_i nll_i, from the forward's lse (float32, (N,)):
    with dlogits_iv = grad_nll_i (softmax_iv - 1[v = y_i]) (0 on ignored tokens),
    grad_h = dlogits W (N, Hd) in h's dtype and grad_weight = dlogits^T h (V, Hd) in weight's
    dtype, both contiguous and accumulated in float32. The logits are recomputed tile by tile in
    each of the two kernels: 8 N V Hd FLOPs, deterministic (no atomics).
    """
    n_tokens, vocab, hidden = _check(h, weight, labels)
    _check_per_token("lse", lse, h)
    _check_per_token("grad_nll", grad_nll, h)
    # float32 accumulators, zeroed: each program reads-modifies-writes its own rows of them.
    grad_h = torch.zeros((n_tokens, hidden), dtype=torch.float32, device=h.device)
    grad_w = torch.zeros((vocab, hidden), dtype=torch.float32, device=h.device)
    if n_tokens > 0 and hidden > 0:
        block_m, block_v, block_k, warps, stages = _config(backward=True)
        args = (*h.stride(), *weight.stride(), labels.stride(0), lse.stride(0),
                grad_nll.stride(0))
        common = dict(UPCAST=_interpreted() and h.dtype == torch.bfloat16,
                      PRECISION=_dot_precision(h.dtype), BLOCK_M=block_m, BLOCK_V=block_v,
                      BLOCK_K=block_k, num_warps=warps, num_stages=stages)
        tail = (n_tokens, vocab, hidden, int(ignore_index))
        _linear_cross_entropy_grad_h_kernel[(triton.cdiv(n_tokens, block_m),)](
            h, weight, labels, lse, grad_nll, grad_h, *args, grad_h.stride(0), *tail, **common)
        _linear_cross_entropy_grad_w_kernel[(triton.cdiv(vocab, block_v),)](
            h, weight, labels, lse, grad_nll, grad_w, *args, grad_w.stride(0), *tail, **common)
    return grad_h.to(h.dtype), grad_w.to(weight.dtype)


__all__ = ["DTYPES", "IGNORE_INDEX", "linear_cross_entropy_backward",
           "linear_cross_entropy_forward"]
