"""Memory-efficient attention with reverse- and forward-mode derivatives.

    attention(q, k, v) = softmax(scale * q k^T + mask) v,   q: (B, H, Nq, D), k, v: (B, H, Nk, D)

the layout and conventions of `torch.nn.functional.scaled_dot_product_attention` (scale defaults
to 1/sqrt(D); `attn_mask` boolean, True = attend, or additive float, broadcastable to
(B, H, Nq, Nk); `is_causal` masks key j > query i). Nothing of size Nq x Nk is ever stored:

  - CUDA: Triton flash-attention kernels (`trustfast.kernels.attention`): forward with the
    log-sum-exp saved, FlashAttention-2 backward, and a forward-mode (JVP) kernel that carries the
    tangents of q, k, v through the same tiled online-softmax pass.
  - CPU (and every call the Triton kernels do not take: a mask, float64): query blocks in
    torch, O(N x block) memory. Its backward recomputes each block's probabilities from q, k, v
    only, with differentiable torch ops, so double backward and forward-over-reverse HVPs work
    through it.

The derivatives are registered on one `torch.autograd.Function` (backward, jvp, and a generated
vmap rule), so `loss.backward()`, `torch.func.grad`, `torch.func.jvp`, `jacfwd` and
`jvp(grad(f))` all work. A first-order backward on CUDA uses the Triton kernel; when a graph of
the backward itself is needed (create_graph, forward-over-reverse), the differentiable block
backward runs instead. `attn_mask` is a constant: no gradient flows into it.
"""

from __future__ import annotations

import math

import torch

from trustfast.checks import check_tensor
from trustfast.ops._dispatch import (
    Constraint,
    dtypes,
    in_range,
    register_op,
    resolve_backend,
    without,
)

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # kernels.attention.MAX_HEAD_DIM (not imported here: it imports triton)


def _keys_present(facts) -> str | None:
    if facts["n_keys"] > 0 or facts.get("n_queries") == 0:
        return None
    return "the kernel needs at least one key (softmax over Nk = 0 keys)"


# What the Triton kernels take; every other call runs the torch path (auto) or raises (forced).
register_op("attention", ("torch", "triton"), constraints={"triton": (
    dtypes(*TRITON_DTYPES),
    without("has_mask", "attn_mask"),
    in_range("head_dim", 1, MAX_HEAD_DIM, "head dim"),
    Constraint("keys", _keys_present, ("n_keys",), "Nk >= 1"),
)})
# Query rows per block of the torch path: its working set is B*H*BLOCK*Nk scores (at N = 4096,
# B*H = 8 in fp32: 32 MB, against 512 MB for the full score matrix). 256: forward 1.7x faster
# than 128 and as fast as 512-1024 there (CPU, measured).
BLOCK = 256


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float | None = None, attn_mask: torch.Tensor | None = None,
                        is_causal: bool = False) -> torch.Tensor:
    """The specification: explicit softmax(scale q k^T + mask) v (O(Nq x Nk) memory)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * (q @ k.transpose(-2, -1))
    bias = _additive_mask(attn_mask, is_causal, q, k)
    if bias is not None:
        scores = scores + bias
        # A row whose keys are all masked attends to nothing: zeros, as SDPA (torch >= 2.5).
        dead = torch.isneginf(scores).all(-1, keepdim=True)
        return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0) @ v
    return torch.softmax(scores, dim=-1) @ v


def _additive_mask(attn_mask, is_causal, q, k, rows: slice | None = None):
    """The additive bias for query rows `rows` (all rows when None), or None without a mask."""
    nq, nk = q.shape[-2], k.shape[-2]
    rows = rows or slice(0, nq)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    bias = None
    if attn_mask is not None:
        m = attn_mask.expand(*q.shape[:-2], nq, nk)[..., rows, :]
        if m.dtype == torch.bool:
            bias = torch.zeros(m.shape, dtype=dtype, device=q.device).masked_fill(~m, -math.inf)
        else:
            bias = m.to(dtype)
    if is_causal:
        i = torch.arange(rows.start, min(rows.stop, nq), device=q.device)[:, None]
        j = torch.arange(nk, device=q.device)[None, :]
        causal = torch.zeros(i.shape[0], nk, dtype=dtype, device=q.device)
        causal = causal.masked_fill(j > i, -math.inf)
        bias = causal if bias is None else bias + causal
    return bias


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _block_probs(qb, k, scale, attn_mask, is_causal, q, rows):
    """Softmax probabilities of one block of query rows, in float32/64 (one fused softmax: the
    forward ran 1.4x faster than logsumexp + exp at N = 4096 on the CPU)."""
    dt = _compute_dtype(q)
    scores = (qb.to(dt) * scale) @ k.to(dt).transpose(-2, -1)
    bias = _additive_mask(attn_mask, is_causal, q, k, rows)
    if bias is None:
        return torch.softmax(scores, dim=-1)
    scores = scores + bias
    # A row whose keys are all masked gets probabilities 0, so output and gradients 0 as SDPA's,
    # not the NaN of softmax over -inf.
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def _blocks(n: int, block: int):
    for start in range(0, max(n, 1), block):  # n = 0: one empty block, so torch.cat has a part
        yield slice(start, min(start + block, n))


def _torch_forward(q, k, v, scale, attn_mask, is_causal, block):
    """(o, an empty lse): the torch backward recomputes everything from q, k, v."""
    dt = _compute_dtype(q)
    vf = v.to(dt)
    outs = [(_block_probs(q[..., rows, :], k, scale, attn_mask, is_causal, q, rows) @ vf)
            .to(q.dtype) for rows in _blocks(q.shape[-2], block)]
    return torch.cat(outs, dim=-2), q.new_empty(0, dtype=torch.float32)


def _torch_backward(q, k, v, do, scale, attn_mask, is_causal, block):
    """dq, dk, dv block by block from q, k, v alone (differentiable: no saved o or lse)."""
    dt = _compute_dtype(q)
    kf, vf = k.to(dt), v.to(dt)
    dqs = []
    dk = torch.zeros(k.shape, dtype=dt, device=k.device)
    dv = torch.zeros(v.shape, dtype=dt, device=v.device)
    for rows in _blocks(q.shape[-2], block):
        qb, dob = q[..., rows, :].to(dt), do[..., rows, :].to(dt)
        p = _block_probs(qb, k, scale, attn_mask, is_causal, q, rows)
        dv = dv + p.transpose(-2, -1) @ dob
        dp = dob @ vf.transpose(-2, -1)
        ds = p * (dp - (p * dp).sum(-1, keepdim=True))  # softmax backward, row by row
        dqs.append(scale * (ds @ kf))
        dk = dk + scale * (ds.transpose(-2, -1) @ qb)
    return torch.cat(dqs, dim=-2).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _torch_jvp(q, k, v, tq, tk, tv, scale, attn_mask, is_causal, block):
    """The tangent of the output: sum_j P_ij (dS_ij v_j + tv_j) - (sum_j P_ij dS_ij) o_i."""
    dt = _compute_dtype(q)
    kf, vf = k.to(dt), v.to(dt)
    outs = []
    for rows in _blocks(q.shape[-2], block):
        qb = q[..., rows, :].to(dt)
        p = _block_probs(qb, k, scale, attn_mask, is_causal, q, rows)
        ds = torch.zeros_like(p)
        if tq is not None:
            ds = ds + scale * (tq[..., rows, :].to(dt) @ kf.transpose(-2, -1))
        if tk is not None:
            ds = ds + scale * (qb @ tk.to(dt).transpose(-2, -1))
        pds = p * ds
        out = pds @ vf - pds.sum(-1, keepdim=True) * (p @ vf)
        if tv is not None:
            out = out + p @ tv.to(dt)
        outs.append(out.to(q.dtype))
    return torch.cat(outs, dim=-2)


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor inside torch.func's wrappers (a Triton kernel needs real storage)."""
    from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor

    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
    return t


def _plain(t: torch.Tensor) -> bool:
    """A tensor outside every torch.func transform and without a forward-mode tangent."""
    from torch._C._functorch import is_functorch_wrapped_tensor

    if is_functorch_wrapped_tensor(t):
        return False
    return torch.autograd.forward_ad.unpack_dual(t).tangent is None


class _Attention(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, attn_mask, scale, is_causal, block, backend):
        if backend == "triton" and all(_plain(t) for t in (q, k, v)):  # not under vmap
            from trustfast.kernels.attention import attention_forward

            return attention_forward(q, k, v, scale, is_causal)
        return _torch_forward(q, k, v, scale, attn_mask, is_causal, block)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, scale, is_causal, block, backend = inputs
        o, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.save_for_forward(q, k, v)
        ctx.attn_mask, ctx.scale, ctx.is_causal = attn_mask, scale, is_causal
        ctx.block, ctx.backend = block, backend

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        first_order = not torch.is_grad_enabled() and all(_plain(t) for t in (q, k, v, do))
        if ctx.backend == "triton" and first_order:
            from trustfast.kernels.attention import attention_backward

            dq, dk, dv = attention_backward(q, k, v, o, lse, do.contiguous(), ctx.scale,
                                            ctx.is_causal)
        else:
            dq, dk, dv = _torch_backward(q, k, v, do, ctx.scale, ctx.attn_mask, ctx.is_causal,
                                         ctx.block)
        return dq, dk, dv, None, None, None, None, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, tmask, tscale, tcausal, tblock, tbackend):
        q, k, v = ctx.saved_tensors  # those of save_for_forward
        tensors = (q, k, v, tq, tk, tv)
        if ctx.backend == "triton" and all(
                t is not None and _unwrapped(t).shape == t.shape for t in tensors):  # no vmap
            from trustfast.kernels.attention import attention_jvp

            # torch.func.jvp hands the rule its own wrappers, and would wrap the kernel's fresh
            # outputs too: the kernel runs on what they hold, with the transform switched off
            args = [_unwrapped(t) for t in tensors]
            with torch._C._DisableFuncTorch():
                to = attention_jvp(*args, ctx.scale, ctx.is_causal)[2]
        else:
            to = _torch_jvp(q, k, v, tq, tk, tv, ctx.scale, ctx.attn_mask, ctx.is_causal,
                            ctx.block)
        return to, None


def _validate(q, k, v, scale, attn_mask, is_causal, block_size) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D) like SDPA, got shape "
                             f"{tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must be (B, H, Nk, D) with q's B, H: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        raise ValueError(f"q, k, v must share the head dim D, got {q.shape[-1]}, {k.shape[-1]}, "
                         f"{v.shape[-1]}")
    if q.shape[-1] < 1 or q.shape[-1] > 256:
        raise ValueError(f"head dim must be in 1..256, got {q.shape[-1]}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise TypeError(f"scale must be a finite number or None, got {scale!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be bool (True = attend) or an additive float mask, "
                            f"got {attn_mask.dtype}")
        if attn_mask.requires_grad:
            raise ValueError("attn_mask must not require grad: it is treated as a constant")
        if attn_mask.device != q.device:
            raise ValueError(f"attn_mask is on {attn_mask.device}, q on {q.device}")
        target = (*q.shape[:2], q.shape[2], k.shape[2])
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, target) == target
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast "
                             f"to (B, H, Nq, Nk) = {target}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
    if is_causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"is_causal needs Nq <= Nk, got Nq={q.shape[-2]}, Nk={k.shape[-2]}")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")


def _checkable(t: torch.Tensor) -> bool:
    """A tensor whose values can be read here: not meta (no data), not inside a torch.func
    transform or forward-mode AD, not being traced by torch.compile (a data-dependent check
    would break the graph)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():  # first: nothing else is traced
        return False
    return t.device.type != "meta" and _plain(t)


def _check_values(q, k, v, attn_mask) -> None:
    """NaN/Inf in q, k or v (or NaN / +inf in an additive mask; -inf there means "masked")
    would give NaN outputs silently: one read of each tensor, a host sync each on CUDA."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if _checkable(t):
            check_tensor(name, t.detach(), finite=True)
    if attn_mask is not None and attn_mask.is_floating_point() and _checkable(attn_mask):
        bad = torch.isnan(attn_mask) | torch.isposinf(attn_mask)
        if bool(bad.any()):
            raise ValueError(f"attn_mask must not hold NaN or +inf (an additive mask uses 0 to "
                             f"attend and -inf to mask), got {int(bad.sum())} such values")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              attn_mask: torch.Tensor | None = None, is_causal: bool = False,
              block_size: int | None = None, backend: str | None = None,
              validate: bool = True) -> torch.Tensor:
    """softmax(scale q k^T + mask) v for (B, H, N, D) tensors, in O(N) memory, with backward,
    double backward and forward-mode (JVP) derivatives.

    Args:
        q: (B, H, Nq, D); k, v: (B, H, Nk, D); D in 1..256 (40, 72, 80, 160 included).
        scale: defaults to 1/sqrt(D).
        attn_mask: boolean (True = attend) or additive float, broadcastable to (B, H, Nq, Nk).
        is_causal: mask key j > query i (as SDPA's is_causal).
        block_size: query rows per block of the torch path (default 256).
        backend: "triton" or "torch" (default: Triton for CUDA tensors, torch otherwise;
            TRUSTFAST_BACKEND overrides). Calls the Triton kernels do not take (a mask, float64,
            Nk = 0) run the torch path; forcing "triton" on them raises BackendUnavailableError.
        validate: refuse NaN/Inf in q, k, v and NaN/+inf in a float attn_mask with a
            ValueError naming the argument (default True). One read of each input, a host
            sync on CUDA: hot loops on inputs they made themselves (a diffusion UNet's
            attention processor) pass False. Skipped, whatever `validate`, for meta tensors,
            under torch.compile and inside torch.func transforms / forward-mode AD, where
            values cannot be read; the backward and JVP never check.
    """
    _validate(q, k, v, scale, attn_mask, is_causal, block_size)
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be a bool, got {validate!r}")
    if validate:
        _check_values(q, k, v, attn_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = resolve_backend("attention", backend, device=q.device, dtype=q.dtype,
                             has_mask=attn_mask is not None, head_dim=q.shape[-1],
                             n_queries=q.shape[-2], n_keys=k.shape[-2])
    out, _ = _Attention.apply(q, k, v, attn_mask, scale, is_causal, block_size or BLOCK, chosen)
    return out
