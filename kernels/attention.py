"""Triton flash-attention kernels for (B, H, N, D) tensors: forward, backward, forward-mode JVP.

Spec: `trustfast/ops/attention.py`, o = softmax(scale * q k^T [+ causal mask]) v, and
lse_i = logsumexp_j(scale * q_i . k_j) (natural log). Nothing of size Nq x Nk is ever stored:
  - forward: online softmax over BLOCK_N-key tiles (running max m, running sum l, the output
    accumulator rescaled by exp(m_old - m_new)), as in FlashAttention (Dao et al., 2022);
  - backward: FlashAttention-2 (Dao, 2023): delta_i = rowsum(do_i * o_i), then one program per key
    block for dk, dv and one per query block for dq, both recomputing P = exp(scale q k^T - lse).
    No atomics, so the gradients are deterministic;
  - JVP: the tangent to = sum_j P_ij (dS_ij v_j + tv_j) - (sum_j P_ij dS_ij) o_i, with
    dS = scale (tq k^T + q tk^T), accumulated in the forward's tiles with its rescaling factor.

Causal masking is top-left aligned, exactly as torch's scaled_dot_product_attention(is_causal=True):
query i sees keys j <= i, whatever Nq and Nk are. Key 0 is visible to every query, so no row is
ever empty (no NaN rows). Cross-attention (Nk != Nq, e.g. Nk = 77 text tokens) is usually not
causal.

Any head dim D in 1..256: the kernels pad it to BLOCK_D = max(16, next power of 2) with masked
loads (tl.dot needs every dim >= 16). Inputs may be non-contiguous (diffusers' (B, N, H, D) viewed
as (B, H, N, D)): each tensor's strides are passed. Accumulation is float32; the exponentials use
exp2 on log2(e)-prescaled scores (one multiply folded into the score scale, exp2 is the native
instruction). Dot operands keep the storage dtype (fp16/bf16 tensor cores); P and dS are rounded
to it before their dots, as FlashAttention does. float32 dots use IEEE precision unless
torch.backends.cuda.matmul.allow_tf32 is set, as for torch's own fp32 matmuls.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)


def _interpreted(device: torch.device) -> bool:
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _forward_config(block_d: int, dtype: torch.dtype, device: torch.device):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward kernel. Untuned until a GPU run
    of benchmarks/gpu_suite.py."""
    if _interpreted(device):
        # 16 is the smallest tile tl.dot accepts: the tests' small shapes then span several tiles,
        # which exercises the online-softmax rescaling and the ragged last tile.
        return 16, 16, 4, 1
    # 64 x 64 with 4 warps: the FlashAttention-2 Triton tutorial's size class for D <= 128. Wider
    # rows (fp16 D > 128, fp32 D > 64) halve BLOCK_N so two stages of K and V tiles plus the Q tile
    # stay within the 228 KB of shared memory of an H100/H200 (fp32 D = 256: 64 + 2 * 2 * 32 KB).
    wide = block_d * dtype.itemsize > 256
    return 64, (32 if wide else 64), 4, (2 if wide else 3)


def _backward_config(block_d: int, dtype: torch.dtype, device: torch.device):
    """Config for the backward and JVP kernels, which hold twice the forward's tiles (k, v, dk, dv
    or q, tq, k, tk, v, tv and two accumulators): 32 x 32 once rows pass 128 bytes. Untuned."""
    if _interpreted(device):
        return 16, 16, 4, 1
    wide = block_d * dtype.itemsize > 128
    return (32, 32, 4, 2) if wide else (64, 64, 4, 2)


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for fp16 / bf16 operands


@triton.jit
def _tile(ptr, rows, n_rows, s_n, d, head_dim, s_d):
    """Load rows x d of one (batch, head) slice; padded rows and columns read 0."""
    offs = rows[:, None].to(tl.int64) * s_n + d[None, :].to(tl.int64) * s_d
    mask = (rows[:, None] < n_rows) & (d[None, :] < head_dim)
    return tl.load(ptr + offs, mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, x, rows, n_rows, s_n, d, head_dim, s_d):
    offs = rows[:, None].to(tl.int64) * s_n + d[None, :].to(tl.int64) * s_d
    mask = (rows[:, None] < n_rows) & (d[None, :] < head_dim)
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _visible(rows, cols, n_keys, CAUSAL: tl.constexpr):
    valid = (rows[:, None] >= 0) & (cols[None, :] < n_keys)
    if CAUSAL:
        valid = valid & (cols[None, :] <= rows[:, None])
    return valid


@triton.jit
def _program(n_m_blocks, n_heads, BLOCK: tl.constexpr):
    """Program id -> (batch, head, first row): row blocks of one head are adjacent, so programs
    running together share that head's K and V in L2."""
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // n_m_blocks
    return bh // n_heads, bh % n_heads, (pid % n_m_blocks) * BLOCK


@triton.jit
def _attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    so_b, so_h, so_n, so_d,
    n_heads, n_q, n_k, head_dim, n_m_blocks, qk_scale,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, start_m = _program(n_m_blocks, n_heads, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr + b * sq_b + h * sq_h, rows, n_q, sq_n, d, head_dim, sq_d)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(n_k, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _tile(k_base, cols, n_k, sk_n, d, head_dim, sk_d)
        v = _tile(v_base, cols, n_k, sv_n, d, head_dim, sv_d)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 domain
        s = tl.where(_visible(rows, cols, n_k, CAUSAL), s, float("-inf"))
        # The first tile holds key 0, visible to every row, so m_new is finite from then on.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    _store_tile(o_ptr + b * so_b + h * so_h, acc / l_i[:, None], rows, n_q, so_n, d, head_dim,
                so_d)
    lse_rows = lse_ptr + (b * n_heads + h) * n_q + rows
    tl.store(lse_rows, (m_i + tl.log2(l_i)) * _LN2, mask=rows < n_q)


@triton.jit
def _attention_jvp_kernel(
    q_ptr, k_ptr, v_ptr, tq_ptr, tk_ptr, tv_ptr, o_ptr, lse_ptr, to_ptr,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    stq_b, stq_h, stq_n, stq_d,
    stk_b, stk_h, stk_n, stk_d,
    stv_b, stv_h, stv_n, stv_d,
    so_b, so_h, so_n, so_d,
    n_heads, n_q, n_k, head_dim, n_m_blocks, scale, qk_scale,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, start_m = _program(n_m_blocks, n_heads, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr + b * sq_b + h * sq_h, rows, n_q, sq_n, d, head_dim, sq_d)
    tq = _tile(tq_ptr + b * stq_b + h * stq_h, rows, n_q, stq_n, d, head_dim, stq_d)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    tk_base = tk_ptr + b * stk_b + h * stk_h
    tv_base = tv_ptr + b * stv_b + h * stv_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_o = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # sum_j p_ij (dS_ij v_j + tv_j)
    acc_mu = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_j p_ij dS_ij
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(n_k, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _tile(k_base, cols, n_k, sk_n, d, head_dim, sk_d)
        v = _tile(v_base, cols, n_k, sv_n, d, head_dim, sv_d)
        tk = _tile(tk_base, cols, n_k, stk_n, d, head_dim, stk_d)
        tv = _tile(tv_base, cols, n_k, stv_n, d, head_dim, stv_d)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(_visible(rows, cols, n_k, CAUSAL), s, float("-inf"))
        ds = tl.dot(tq, tl.trans(k), input_precision=PRECISION)
        ds = (tl.dot(q, tl.trans(tk), acc=ds, input_precision=PRECISION)) * scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        pds = p * ds  # masked entries: p = 0 and ds finite
        l_i = l_i * alpha + tl.sum(p, 1)
        acc_mu = acc_mu * alpha + tl.sum(pds, 1)
        acc_o = acc_o * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        acc_t = acc_t * alpha[:, None] + tl.dot(pds.to(v.dtype), v, input_precision=PRECISION)
        acc_t = tl.dot(p.to(tv.dtype), tv, acc=acc_t, input_precision=PRECISION)
        m_i = m_new

    o = acc_o / l_i[:, None]
    to = acc_t / l_i[:, None] - (acc_mu / l_i)[:, None] * o
    _store_tile(o_ptr + b * so_b + h * so_h, o, rows, n_q, so_n, d, head_dim, so_d)
    _store_tile(to_ptr + b * so_b + h * so_h, to, rows, n_q, so_n, d, head_dim, so_d)
    lse_rows = lse_ptr + (b * n_heads + h) * n_q + rows
    tl.store(lse_rows, (m_i + tl.log2(l_i)) * _LN2, mask=rows < n_q)


@triton.jit
def _attention_backward_preprocess_kernel(
    o_ptr, do_ptr, delta_ptr,
    so_b, so_h, so_n, so_d,
    sdo_b, sdo_h, sdo_n, sdo_d,
    n_heads, n_q, head_dim, n_m_blocks,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, start_m = _program(n_m_blocks, n_heads, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    o = _tile(o_ptr + b * so_b + h * so_h, rows, n_q, so_n, d, head_dim, so_d).to(tl.float32)
    do = _tile(do_ptr + b * sdo_b + h * sdo_h, rows, n_q, sdo_n, d, head_dim, sdo_d)
    delta = tl.sum(o * do.to(tl.float32), 1)
    tl.store(delta_ptr + (b * n_heads + h) * n_q + rows, delta, mask=rows < n_q)


@triton.jit
def _attention_backward_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sdo_b, sdo_h, sdo_n, sdo_d,
    sdk_b, sdk_h, sdk_n, sdk_d,
    sdv_b, sdv_h, sdv_n, sdv_d,
    n_heads, n_q, n_k, head_dim, n_n_blocks, scale,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, start_n = _program(n_n_blocks, n_heads, BLOCK_N)
    cols = start_n + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    k = _tile(k_ptr + b * sk_b + h * sk_h, cols, n_k, sk_n, d, head_dim, sk_d)
    v = _tile(v_ptr + b * sv_b + h * sv_h, cols, n_k, sv_n, d, head_dim, sv_d)
    q_base = q_ptr + b * sq_b + h * sq_h
    do_base = do_ptr + b * sdo_b + h * sdo_h
    row_base = (b * n_heads + h) * n_q
    qk_scale = scale * _LOG2E

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:  # queries i < start_n see none of these keys
        lo = (start_n // BLOCK_M) * BLOCK_M
    for start_m in range(lo, n_q, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = _tile(q_base, rows, n_q, sq_n, d, head_dim, sq_d)
        do = _tile(do_base, rows, n_q, sdo_n, d, head_dim, sdo_d)
        lse = tl.load(lse_ptr + row_base + rows, mask=rows < n_q, other=0.0) * _LOG2E
        delta = tl.load(delta_ptr + row_base + rows, mask=rows < n_q, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        valid = _visible(rows, cols, n_k, CAUSAL) & (rows[:, None] < n_q)
        p = tl.exp2(tl.where(valid, s, float("-inf")) - lse[:, None])
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, acc=dv, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, acc=dk, input_precision=PRECISION)

    _store_tile(dk_ptr + b * sdk_b + h * sdk_h, dk * scale, cols, n_k, sdk_n, d, head_dim, sdk_d)
    _store_tile(dv_ptr + b * sdv_b + h * sdv_h, dv, cols, n_k, sdv_n, d, head_dim, sdv_d)


@triton.jit
def _attention_backward_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sdo_b, sdo_h, sdo_n, sdo_d,
    sdq_b, sdq_h, sdq_n, sdq_d,
    n_heads, n_q, n_k, head_dim, n_m_blocks, scale,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, start_m = _program(n_m_blocks, n_heads, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr + b * sq_b + h * sq_h, rows, n_q, sq_n, d, head_dim, sq_d)
    do = _tile(do_ptr + b * sdo_b + h * sdo_h, rows, n_q, sdo_n, d, head_dim, sdo_d)
    row_base = (b * n_heads + h) * n_q
    lse = tl.load(lse_ptr + row_base + rows, mask=rows < n_q, other=0.0) * _LOG2E
    delta = tl.load(delta_ptr + row_base + rows, mask=rows < n_q, other=0.0)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    qk_scale = scale * _LOG2E

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(n_k, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _tile(k_base, cols, n_k, sk_n, d, head_dim, sk_d)
        v = _tile(v_base, cols, n_k, sv_n, d, head_dim, sv_d)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        valid = _visible(rows, cols, n_k, CAUSAL) & (rows[:, None] < n_q)
        p = tl.exp2(tl.where(valid, s, float("-inf")) - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, acc=dq, input_precision=PRECISION)

    _store_tile(dq_ptr + b * sdq_b + h * sdq_h, dq * scale, rows, n_q, sdq_n, d, head_dim, sdq_d)


def _check(names: str, *tensors: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Launcher-level sanity (trustfast.ops validates properly): returns B, H, Nq, Nk, D."""
    q, k, v = tensors[:3]
    if q.dtype not in DTYPES:
        raise TypeError(f"attention triton kernel: unsupported dtype {q.dtype}")
    for name, t in zip(names.split(), tensors):
        if t.dtype != q.dtype or t.device != q.device or t.dim() != 4:
            raise ValueError(f"attention triton kernel: {name} must be a 4-D {q.dtype} tensor on "
                             f"{q.device}, got {t.dim()}-D {t.dtype} on {t.device}")
    b, h, n_q, head_dim = q.shape
    n_k = k.shape[2]
    if k.shape != (b, h, n_k, head_dim) or v.shape != k.shape:
        raise ValueError(f"attention triton kernel: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} do not match (B, H, N, D)")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"attention triton kernel: head dim must be in 1..{MAX_HEAD_DIM}, "
                         f"got {head_dim}")
    if n_k == 0 and n_q > 0:
        raise ValueError("attention triton kernel: softmax over zero keys is undefined (Nk = 0)")
    return b, h, n_q, n_k, head_dim


def _empty_outputs(q: torch.Tensor):
    b, h, n_q, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty(
        (b, h, n_q), dtype=torch.float32, device=q.device)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """o = softmax(scale q k^T) v (contiguous, q's dtype) and lse = logsumexp_j(scale q k^T)
    (float32, (B, H, Nq)); causal masks keys j > i (top-left aligned, as torch SDPA)."""
    b, h, n_q, n_k, head_dim = _check("q k v", q, k, v)
    o, lse = _empty_outputs(q)
    if o.numel() == 0:
        return o, lse
    block_d = _block_d(head_dim)
    block_m, block_n, warps, stages = _forward_config(block_d, q.dtype, q.device)
    n_m_blocks = triton.cdiv(n_q, block_m)
    _attention_forward_kernel[(n_m_blocks * b * h,)](
        q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        h, n_q, n_k, head_dim, n_m_blocks, float(scale) * LOG2E,
        CAUSAL=bool(causal), PRECISION=_dot_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=stages,
    )
    return o, lse


def attention_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tq: torch.Tensor,
                  tk: torch.Tensor, tv: torch.Tensor, scale: float,
                  causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, lse, to): the forward plus its forward-mode derivative along (tq, tk, tv) in one pass,
    to = sum_j P_ij (dS_ij v_j + tv_j) - (sum_j P_ij dS_ij) o_i, dS = scale (tq k^T + q tk^T)."""
    b, h, n_q, n_k, head_dim = _check("q k v tq tk tv", q, k, v, tq, tk, tv)
    if tq.shape != q.shape or tk.shape != k.shape or tv.shape != v.shape:
        raise ValueError("attention triton kernel: tangents must have the primals' shapes")
    o, lse = _empty_outputs(q)
    to = torch.empty_like(o)
    if o.numel() == 0:
        return o, lse, to
    block_d = _block_d(head_dim)
    block_m, block_n, warps, stages = _backward_config(block_d, q.dtype, q.device)
    n_m_blocks = triton.cdiv(n_q, block_m)
    _attention_jvp_kernel[(n_m_blocks * b * h,)](
        q, k, v, tq, tk, tv, o, lse, to,
        *q.stride(), *k.stride(), *v.stride(), *tq.stride(), *tk.stride(), *tv.stride(),
        *o.stride(), h, n_q, n_k, head_dim, n_m_blocks, float(scale), float(scale) * LOG2E,
        CAUSAL=bool(causal), PRECISION=_dot_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=stages,
    )
    return o, lse, to


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, do: torch.Tensor, scale: float,
                       causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for upstream do, from the forward's o and lse (FlashAttention-2): with
    delta_i = do_i . o_i and P recomputed, dv = P^T do, dS = P * (do v^T - delta),
    dq = scale dS k, dk = scale dS^T q. Contiguous outputs in q's dtype."""
    b, h, n_q, n_k, head_dim = _check("q k v o do", q, k, v, o, do)
    if o.shape != q.shape or do.shape != q.shape or lse.shape != (b, h, n_q):
        raise ValueError("attention triton kernel: o and do must have q's shape, lse (B, H, Nq)")
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    lse = lse.to(torch.float32).contiguous()  # (B, H, Nq): O(N), so a copy costs nothing
    delta = torch.empty_like(lse)
    block_d = _block_d(head_dim)
    block_m, block_n, warps, stages = _backward_config(block_d, q.dtype, q.device)
    precision = _dot_precision(q.dtype)
    n_m_blocks = triton.cdiv(n_q, block_m)
    n_n_blocks = triton.cdiv(n_k, block_n)
    _attention_backward_preprocess_kernel[(n_m_blocks * b * h,)](
        o, do, delta, *o.stride(), *do.stride(), h, n_q, head_dim, n_m_blocks,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    common = dict(CAUSAL=bool(causal), PRECISION=precision, BLOCK_M=block_m, BLOCK_N=block_n,
                  BLOCK_D=block_d, num_warps=warps, num_stages=stages)
    _attention_backward_dkdv_kernel[(n_n_blocks * b * h,)](
        q, k, v, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        h, n_q, n_k, head_dim, n_n_blocks, float(scale), **common,
    )
    _attention_backward_dq_kernel[(n_m_blocks * b * h,)](
        q, k, v, do, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        h, n_q, n_k, head_dim, n_m_blocks, float(scale), **common,
    )
    return dq, dk, dv


__all__ = ["DTYPES", "MAX_HEAD_DIM", "attention_backward", "attention_forward", "attention_jvp"]
