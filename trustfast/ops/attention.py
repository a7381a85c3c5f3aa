"""Memory-efficient attention with reverse- and forward-mode derivatives.

    attention(q, k, v) = softmax(scale * q k^T + mask) v,   q: (B, H, Nq, D), k, v: (B, H, Nk, D)

the layout and conventions of `torch.nn.functional.scaled_dot_product_attention` (scale defaults
to 1/sqrt(D), any head dim D >= 1; `attn_mask` boolean, True = attend, or additive float,
broadcastable to (B, H, Nq, Nk); `is_causal` masks key j > query i). Nothing of size Nq x Nk is
ever stored:

  - CUDA: Triton flash-attention kernels (`trustfast.kernels.attention`): forward with the
    log-sum-exp saved, FlashAttention-2 backward, and a forward-mode (JVP) kernel that carries the
    tangents of q, k, v through the same tiled online-softmax pass (D <= 256, no mask).
  - CPU ("sdpa"): PyTorch's fused CPU flash kernel
    (`aten._scaled_dot_product_flash_attention_for_cpu`, the kernel SDPA itself picks on the CPU)
    for the forward, which returns the output and the log-sum-exp, and its fused backward for a
    first-order gradient: any dtype, head dim, boolean / additive mask and is_causal.
  - torch (every call neither fused kernel takes, and every derivative they lack): query blocks
    in torch, O(N x block) memory. Its backward recomputes each block's probabilities from q, k,
    v with differentiable torch ops, so double backward and forward-over-reverse HVPs work
    through it; the JVP runs the same blocks.

The derivatives are registered on one `torch.autograd.Function` (backward, jvp, and a generated
vmap rule), so `loss.backward()`, `torch.func.grad`, `torch.func.jvp`, `jacfwd` and
`jvp(grad(f))` all work, whichever backend ran the forward. A first-order backward runs the fused
kernel of the backend (Triton, CPU flash); when a graph of the backward itself is needed
(create_graph, forward-over-reverse) or the mask needs a gradient, the differentiable block
backward runs instead. An additive float `attn_mask` that requires grad gets one, as under SDPA:
dL/dmask = dS = P * (dP - rowsum(P * dP)), dP = dO v^T (the softmax backward of the scores),
summed over the dims the mask broadcasts along; a boolean mask is a constant.
"""

from __future__ import annotations

import math

import torch
from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor
from torch.autograd import forward_ad

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


def _sequences_present(facts) -> str | None:
    if facts["n_queries"] > 0 and facts["n_keys"] > 0:
        return None
    return (f"the fused CPU kernel needs Nq >= 1 and Nk >= 1 (it dies of SIGFPE on an empty "
            f"sequence), got Nq={facts['n_queries']}, Nk={facts['n_keys']}")


SDPA = "sdpa"
# What each fused backend takes; every other call runs the torch path (auto) or raises (forced).
# The CPU flash kernel is templated over all four dtypes (float64 included) and takes any head
# dim, a broadcast additive mask and is_causal; Triton keeps its tile limits.
register_op("attention", ("torch", "triton", SDPA), constraints={
    "triton": (
        dtypes(*TRITON_DTYPES),
        without("has_mask", "attn_mask"),
        in_range("head_dim", 1, MAX_HEAD_DIM, "head dim"),
        Constraint("keys", _keys_present, ("n_keys",), "Nk >= 1"),
    ),
    SDPA: (
        dtypes(*DTYPES),
        Constraint("sequences", _sequences_present, ("n_queries", "n_keys"),
                   "Nq >= 1 and Nk >= 1"),
    ),
})
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


def _torch_backward(q, k, v, do, scale, attn_mask, is_causal, block, mask_grad=False):
    """dq, dk, dv (and dmask when `mask_grad`, else None) block by block from q, k, v alone
    (differentiable: no saved o or lse)."""
    dt = _compute_dtype(q)
    kf, vf = k.to(dt), v.to(dt)
    dqs = []
    dk = torch.zeros(k.shape, dtype=dt, device=k.device)
    dv = torch.zeros(v.shape, dtype=dt, device=v.device)
    dmask = _MaskGrad(attn_mask, q, k) if mask_grad else None
    for rows in _blocks(q.shape[-2], block):
        qb, dob = q[..., rows, :].to(dt), do[..., rows, :].to(dt)
        p = _block_probs(qb, k, scale, attn_mask, is_causal, q, rows)
        dv = dv + p.transpose(-2, -1) @ dob
        dp = dob @ vf.transpose(-2, -1)
        ds = p * (dp - (p * dp).sum(-1, keepdim=True))  # softmax backward, row by row
        dqs.append(scale * (ds @ kf))
        dk = dk + scale * (ds.transpose(-2, -1) @ qb)
        if dmask is not None:
            dmask.add(ds, rows)
    return (torch.cat(dqs, dim=-2).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
            None if dmask is None else dmask.result())


class _MaskGrad:
    """dL/dmask from the blocks' dS = dL/d(scores + mask): summed over every dim the mask
    broadcasts along (as autograd's expand backward), rows written block by block."""

    def __init__(self, attn_mask, q, k):
        self.mask = attn_mask
        self.shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)  # as 4-D
        self.dims = tuple(i for i in (0, 1, 3) if self.shape[i] == 1)
        self.rows_broadcast = self.shape[2] == 1 and q.shape[-2] != 1
        self.parts, self.total = [], None

    def add(self, ds, rows):
        g = ds.sum(self.dims, keepdim=True) if self.dims else ds
        if self.rows_broadcast:
            g = g.sum(2, keepdim=True)
            self.total = g if self.total is None else self.total + g
        else:
            self.parts.append(g)

    def result(self):
        g = self.total if self.rows_broadcast else torch.cat(self.parts, dim=2)
        return g.reshape(self.mask.shape).to(self.mask.dtype)


def _torch_jvp(q, k, v, tq, tk, tv, scale, attn_mask, is_causal, block, tmask=None):
    """The tangent of the output: sum_j P_ij (dS_ij v_j + tv_j) - (sum_j P_ij dS_ij) o_i, with
    dS = scale (tq k^T + q tk^T) + tmask (the tangent of an additive float mask)."""
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
        if tmask is not None:
            ds = ds + tmask.expand(*q.shape[:-2], q.shape[-2], k.shape[-2])[..., rows, :].to(dt)
        pds = p * ds
        out = pds @ vf - pds.sum(-1, keepdim=True) * (p @ vf)
        if tv is not None:
            out = out + p @ tv.to(dt)
        outs.append(out.to(q.dtype))
    return torch.cat(outs, dim=-2)


def _fused_mask(attn_mask, q):
    """The mask as the CPU flash kernel takes it: additive, float32 (float64 for float64 q),
    4-D (it takes 2-D or 4-D masks), in its own broadcastable shape (never expanded)."""
    if attn_mask is None:
        return None
    dt = _compute_dtype(q)
    m = attn_mask.detach().reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dt, device=q.device).masked_fill(~m, -math.inf)
    return m.to(dt)


# The overloads themselves: `torch.ops.aten.<name>(...)` resolves the name on every call (~15 us,
# a tenth of the op at the tiny UNet's shapes).
_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def _sdpa_forward(q, k, v, scale, attn_mask, is_causal):
    """(o, lse) from PyTorch's fused CPU flash kernel (lse: float32, float64 for float64)."""
    return _FLASH_CPU(q, k, v, 0.0, is_causal, attn_mask=_fused_mask(attn_mask, q), scale=scale)


def _sdpa_backward(q, k, v, o, lse, do, scale, attn_mask, is_causal):
    """dq, dk, dv from the fused CPU flash backward (a first-order pass, no graph)."""
    return _FLASH_CPU_BACKWARD(do, q, k, v, o, lse, 0.0, is_causal,
                               attn_mask=_fused_mask(attn_mask, q), scale=scale)


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor inside torch.func's wrappers (a Triton kernel needs real storage)."""
    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
    return t


def _plain(t: torch.Tensor) -> bool:
    """A tensor outside every torch.func transform and without a forward-mode tangent."""
    if is_functorch_wrapped_tensor(t):
        return False
    return forward_ad.unpack_dual(t).tangent is None


def _all_plain(*tensors: torch.Tensor) -> bool:
    """`_plain` for each, answered at once when no torch.func transform and no forward-mode
    level is active (then none can be wrapped or carry a tangent): the per-tensor test costs
    ~2 us a tensor, on every call of a UNet's attention layers."""
    if (not torch._C._are_functorch_transforms_active()
            and getattr(forward_ad, "_current_level", 0) < 0):
        return True
    return all(_plain(t) for t in tensors)


class _Attention(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, attn_mask, scale, is_causal, block, backend):
        plain = _all_plain(q, k, v)  # not under vmap: the kernels need storage
        if backend == "triton" and plain:
            from trustfast.kernels.attention import attention_forward

            return attention_forward(q, k, v, scale, is_causal)
        if backend == SDPA and plain:
            return _sdpa_forward(q, k, v, scale, attn_mask, is_causal)
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
        mask_grad = ctx.needs_input_grad[3]
        # The fused kernels give dq, dk, dv without a graph: only for a first-order pass, with
        # the forward's o and lse (an empty lse: the forward ran the torch path, e.g. under vmap)
        fused = (not torch.is_grad_enabled() and not mask_grad and lse.numel() > 0
                 and _all_plain(q, k, v, do))
        dmask = None
        if ctx.backend == "triton" and fused:
            from trustfast.kernels.attention import attention_backward

            dq, dk, dv = attention_backward(q, k, v, o, lse, do.contiguous(), ctx.scale,
                                            ctx.is_causal)
        elif ctx.backend == SDPA and fused:
            dq, dk, dv = _sdpa_backward(q, k, v, o, lse, do, ctx.scale, ctx.attn_mask,
                                        ctx.is_causal)
        else:
            dq, dk, dv, dmask = _torch_backward(q, k, v, do, ctx.scale, ctx.attn_mask,
                                                ctx.is_causal, ctx.block, mask_grad)
        return dq, dk, dv, dmask, None, None, None, None

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
                            ctx.block, tmask)
        return to, None


try:
    from torch._functorch.utils import unwrap_dead_wrappers

    _FUNCTION_APPLY = super(torch.autograd.Function, _Attention).apply
except (ImportError, AttributeError):  # another torch: the public apply below
    _FUNCTION_APPLY = None


def _apply(*args):
    """`_Attention.apply(*args)` (every argument positional). Outside torch.func transforms it
    skips `Function.apply`'s inspect.signature binding of the arguments, which is a no-op for a
    full positional call and cost 50-80 us a call (a third of the fused kernel's time at the
    tiny UNet's shapes, B2 H2 N64 D80: apply 183 us against 136 us without it). torch.compile
    and torch.func get the public apply, which they know how to trace."""
    if (_FUNCTION_APPLY is None or torch._C._are_functorch_transforms_active()
            or torch.compiler.is_compiling()):
        return _Attention.apply(*args)
    return _FUNCTION_APPLY(*unwrap_dead_wrappers(args))


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
    if q.shape[-1] < 1:
        raise ValueError(f"head dim must be >= 1, got {q.shape[-1]}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise TypeError(f"scale must be a finite number or None, got {scale!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be bool (True = attend) or an additive float mask, "
                            f"got {attn_mask.dtype}")
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


def _sum_is_finite(t: torch.Tensor) -> bool:
    """Whether the sum of `t` is finite, accumulated in float32 (float64 for float64): it is
    only when every element is (NaN and +-inf propagate through a sum), and one sum reads the
    tensor 30x faster than isfinite(t).all() on the CPU (33 us against 1 ms at 0.5M float32
    elements). A non-finite sum can still be an overflow of finite values: the exact check
    decides then."""
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    return bool(torch.isfinite(t.sum(dtype=acc)))


def _check_values(q, k, v, attn_mask) -> None:
    """NaN/Inf in q, k or v (or NaN / +inf in an additive mask; -inf there means "masked")
    would give NaN outputs silently: one read of each tensor, a host sync each on CUDA."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if _checkable(t) and not _sum_is_finite(t.detach()):
            check_tensor(name, t.detach(), finite=True)
    if (attn_mask is not None and attn_mask.is_floating_point() and attn_mask.numel() > 0
            and _checkable(attn_mask)):
        top = attn_mask.detach().max()  # NaN propagates through max, +inf is the max
        if not bool(top < math.inf):
            bad = torch.isnan(attn_mask) | torch.isposinf(attn_mask)
            raise ValueError(f"attn_mask must not hold NaN or +inf (an additive mask uses 0 to "
                             f"attend and -inf to mask), got {int(bad.sum())} such values")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              attn_mask: torch.Tensor | None = None, is_causal: bool = False,
              block_size: int | None = None, backend: str | None = None,
              validate: bool = True) -> torch.Tensor:
    """softmax(scale q k^T + mask) v for (B, H, N, D) tensors, in O(N) memory, with backward,
    double backward and forward-mode (JVP) derivatives.

    Args:
        q: (B, H, Nq, D); k, v: (B, H, Nk, D); any head dim D >= 1 (40, 80, 160, 512 ...).
        scale: defaults to 1/sqrt(D).
        attn_mask: boolean (True = attend) or additive float, broadcastable to (B, H, Nq, Nk).
            A float mask that requires grad gets dL/dmask (the scores' gradient dS, summed
            over the broadcast dims) and a JVP term; a boolean mask is a constant.
        is_causal: mask key j > query i (as SDPA's is_causal).
        block_size: query rows per block of the torch path (default 256).
        backend: "triton", "sdpa" or "torch" (default: Triton for CUDA tensors, PyTorch's fused
            CPU flash kernel ("sdpa") for CPU tensors; TRUSTFAST_BACKEND overrides). Calls a
            fused kernel does not take (Triton: a mask, float64, D > 256, Nk = 0; sdpa: Nq = 0
            or Nk = 0) run the torch path; forcing that backend on them raises
            BackendUnavailableError. Whichever ran the forward, forward-mode AD, a backward
            with create_graph and a mask gradient run the differentiable torch blocks.
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
    out, _ = _apply(q, k, v, attn_mask, scale, is_causal, block_size or BLOCK, chosen)
    return out
