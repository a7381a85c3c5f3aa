"""Hessian-vector products: trustfast's modes vs `torch.autograd.functional.hvp`, on three models.

Workloads (float32, seeded; `small=True` shrinks each for dry runs):
  - "mlp": 256-512-512-10 with ReLU, batch 512, cross-entropy;
  - "cnn": conv 3->32->64 (3x3, BatchNorm in eval mode, ReLU, 2x2 max pool) on 32x32 inputs,
    linear head, batch 64, cross-entropy;
  - "transformer": one pre-LN block, d_model 256, 4 heads of softmax attention written out (not
    SDPA / nn.MultiheadAttention, whose fused kernels have no forward AD), GELU MLP 1024,
    sequence 128, batch 8, mean squared error to a random target.
The unit is one gradient (`torch.autograd.grad`); the peer is `torch.autograd.functional.hvp`
(double-backward trick) on the same f. DESIGN.md's floor for an HVP: 2-4 x one gradient.

Registry interface: `checks` (key "hvp_checks": `check` per workload, float32, TF32 off, relative
L2 difference to the peer <= CHECK_RTOL) and `timings` (key "hvp_timings": `measure` per workload,
at torch's TF32 defaults, which are what users run). Neither takes a backend: an HVP is autograd.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from trustfast._bench.registry import Section
from trustfast._bench.timing import median_time, tf32_settings
from trustfast.blo.hvp import hvp, hvp_operator, module_loss

WORKLOADS = ("mlp", "cnn", "transformer")
BATCH = 8  # vectors per batched product
GRADIENT = "gradient"
PEER = "torch.autograd.functional.hvp"
OPERATOR = "trustfast operator (reused graph, per product)"
SINGLE_MODES = ("fwd_rev", "rev_rev", "finite_diff")
BATCHED_MODES = ("fwd_rev", "rev_rev")
BATCHED = {f"trustfast {m} batched x{BATCH}": f"trustfast {m}" for m in BATCHED_MODES}
VARIANTS = (GRADIENT, *(f"trustfast {m}" for m in SINGLE_MODES), OPERATOR, PEER, *BATCHED)
CHECK_MODES = ("fwd_rev", "rev_rev")
CHECK_RTOL = 1e-4  # relative L2 difference to the peer, float32, TF32 off

# name -> (full size, small size) keyword arguments of the builders below.
SIZES = {
    "mlp": (dict(widths=(256, 512, 512, 10), batch=512), dict(widths=(32, 64, 64, 10), batch=16)),
    "cnn": (dict(channels=(3, 32, 64), side=32, batch=64), dict(channels=(3, 8, 16), side=8,
                                                                 batch=4)),
    "transformer": (dict(d_model=256, heads=4, d_ff=1024, seq=128, batch=8),
                    dict(d_model=32, heads=4, d_ff=64, seq=16, batch=2)),
}

Workload = tuple[Callable, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]


class Attention(nn.Module):
    """Multi-head softmax self-attention, every step a plain op that has forward-mode AD."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        y = scores.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int, d_ff: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _mlp(gen, widths, batch):
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    inputs = torch.randn(batch, widths[0], generator=gen)
    targets = torch.randint(widths[-1], (batch,), generator=gen)
    return nn.Sequential(*layers), F.cross_entropy, inputs, targets


def _cnn(gen, channels, side, batch):
    c0, c1, c2 = channels
    model = nn.Sequential(
        nn.Conv2d(c0, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, 10),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics, used in eval mode
            m.running_mean.normal_(0.0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    inputs = torch.rand(batch, c0, side, side, generator=gen)
    targets = torch.randint(10, (batch,), generator=gen)
    return model, F.cross_entropy, inputs, targets


def _transformer(gen, d_model, heads, d_ff, seq, batch):
    inputs = torch.randn(batch, seq, d_model, generator=gen)
    targets = torch.randn(batch, seq, d_model, generator=gen)
    return Block(d_model, heads, d_ff), _mse, inputs, targets


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Not F.mse_loss: in torch 2.13 jvp-of-grad through its mean reduction raises "ZeroTensors
    # are immutable" (reduction="sum" and this expression work), so fwd_rev could not run.
    return (outputs - targets).pow(2).mean()


_BUILDERS = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer}


def build(workload: str, device: torch.device | str = "cpu", *, small: bool = False,
          dtype: torch.dtype = torch.float32, seed: int = 0) -> Workload:
    """(f, params, args, v) of one workload: f(params, *args) is the scalar loss.

    Everything is drawn in float32 on the CPU from `seed` and then cast, so a float64 build holds
    exactly the float32 build's numbers (the ground truth for the float32 results).
    """
    if workload not in _BUILDERS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.Module initializers use the global generator
    model, loss_fn, inputs, targets = _BUILDERS[workload](gen, **SIZES[workload][small])
    model = model.to(device=device, dtype=dtype).eval()
    f, params = module_loss(model, loss_fn)
    v = {k: torch.randn(p.shape, generator=gen).to(device=device, dtype=dtype)
         for k, p in params.items()}
    args = (inputs.to(device=device, dtype=dtype), targets.to(device))
    return f, params, args, v


def num_params(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def peer_hvp(f: Callable, params: dict[str, torch.Tensor], v: dict[str, torch.Tensor],
             args: tuple) -> dict[str, torch.Tensor]:
    """`torch.autograd.functional.hvp` on the same f (it takes a tuple of tensors)."""
    keys = list(params)

    def func(*tensors):
        return f(dict(zip(keys, tensors)), *args)

    _, out = torch.autograd.functional.hvp(func, tuple(params[k] for k in keys),
                                           tuple(v[k] for k in keys))
    return dict(zip(keys, out))


def variants(f: Callable, params: dict[str, torch.Tensor], args: tuple,
             v: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable, in the order of VARIANTS."""
    leaves = {k: p.detach().requires_grad_() for k, p in params.items()}

    def gradient():
        return torch.autograd.grad(f(leaves, *args), list(leaves.values()))

    out: dict[str, Callable[[], object]] = {GRADIENT: gradient}
    for mode in SINGLE_MODES:
        out[f"trustfast {mode}"] = lambda mode=mode: hvp(f, params, v, args=args, mode=mode)
    op = hvp_operator(f, params, args=args, mode="rev_rev")  # forward + first backward, once
    out[OPERATOR] = lambda: op(v)
    out[PEER] = lambda: peer_hvp(f, params, v, args)
    stacked = {k: torch.stack([t] * BATCH) for k, t in v.items()}
    for mode in BATCHED_MODES:
        out[f"trustfast {mode} batched x{BATCH}"] = lambda mode=mode: hvp(
            f, params, stacked, args=args, mode=mode, batched=True)
    return out


def forward_ad_works(f: Callable, params: dict, args: tuple, v: dict) -> bool:
    """Whether jvp-of-grad runs on f (else hvp's "fwd_rev" silently times "rev_rev")."""
    try:
        torch.func.jvp(torch.func.grad(lambda p: f(p, *args)), (params,), (v,))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def measure(device: torch.device | str, repeats: int, *, small: bool = False,
            workloads: tuple[str, ...] = WORKLOADS, warmup: int = 2) -> list[dict]:
    """One row per (workload, variant): median ms and its ratios.

    "x gradient": ms / one gradient's ms (batched rows: all BATCH products together);
    "x single hvp" (batched rows): ms / one product of the same mode;
    "speed-up vs torch hvp": peer ms per product / this row's ms per product.
    """
    device = torch.device(device)
    rows = []
    for workload in workloads:
        f, params, args, v = build(workload, device, small=small)
        fns = variants(f, params, args, v)
        fwd_ad = forward_ad_works(f, params, args, v)
        ms = {name: 1e3 * median_time(fn, device, repeats, warmup) for name, fn in fns.items()}
        del fns
        for name, t in ms.items():
            products = BATCH if name in BATCHED else (0 if name == GRADIENT else 1)
            row = {"workload": workload, "variant": name, "params": num_params(params),
                   "dtype": "float32", "products": products, "ms": t,
                   "x gradient": t / ms[GRADIENT]}
            if products:
                row["speed-up vs torch hvp"] = ms[PEER] * products / t
            if name in BATCHED:
                row["x single hvp"] = t / ms[BATCHED[name]]
            if "fwd_rev" in name and not fwd_ad:
                row["note"] = "no forward AD for an op: fwd_rev ran rev_rev"
            rows.append(row)
    return rows


def _rel_diff(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """||got - ref|| / ||ref|| over all leaves together, in float64."""
    num = sum(float((got[k].double() - ref[k].double()).pow(2).sum()) for k in ref)
    den = sum(float(ref[k].double().pow(2).sum()) for k in ref)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions (on by default for convs): float32 means it."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check(workload: str, device: torch.device | str, *, small: bool = False,
          rtol: float = CHECK_RTOL) -> list[dict]:
    """float32 fwd_rev / rev_rev (single and batched) against the peer in float32.

    Passes when the relative L2 difference to `torch.autograd.functional.hvp` is <= rtol. Also
    records both results' relative error against the peer run in float64 on the same numbers.
    """
    device = torch.device(device)
    with full_float32():
        f, params, args, v = build(workload, device, small=small)
        f64, params64, args64, _ = build(workload, device, small=small, dtype=torch.float64)
        v2 = {k: torch.stack([t, torch.roll(t.flatten(), 1).view_as(t)]) for k, t in v.items()}
        peer = [peer_hvp(f, params, {k: t[i] for k, t in v2.items()}, args) for i in range(2)]
        exact = [peer_hvp(f64, params64, {k: t[i].double() for k, t in v2.items()}, args64)
                 for i in range(2)]
        peer_err = max(_rel_diff(peer[i], exact[i]) for i in range(2))
        fwd_ad = forward_ad_works(f, params, args, v)
        rows = []
        for mode in CHECK_MODES:
            for batched in (False, True):
                if batched:
                    out = hvp(f, params, v2, args=args, mode=mode, batched=True)
                    got = [{k: t[i] for k, t in out.items()} for i in range(2)]
                else:
                    got = [hvp(f, params, {k: t[0] for k, t in v2.items()}, args=args,
                               mode=mode)]
                diff = max(_rel_diff(g, peer[i]) for i, g in enumerate(got))
                err = max(_rel_diff(g, exact[i]) for i, g in enumerate(got))
                variant = f"trustfast {mode}" + (" batched x2" if batched else "")
                rows.append({"case": f"hvp {workload}: {variant}", "workload": workload,
                             "variant": variant, "dtype": "float32",
                             "numel": num_params(params), "rel_diff_vs_peer": diff,
                             "rtol": rtol, "rel_err_vs_float64": err,
                             "peer_rel_err_vs_float64": peer_err, "passed": diff <= rtol})
                if mode == "fwd_rev" and not fwd_ad:
                    rows[-1]["note"] = "no forward AD for an op: fwd_rev ran rev_rev"
    return rows


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    """One section per workload (`check`); `backend` is unused (no kernel of ours runs)."""
    device = torch.device(device)
    return [Section("hvp_checks", f"check hvp {w}", lambda w=w: check(w, device, small=small),
                    {"case": f"hvp {w}", "workload": w, "dtype": "float32"})
            for w in WORKLOADS]


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """One section per workload (`measure`, at most 10 repeats)."""
    device = torch.device(device)
    tf32 = tf32_settings(device)
    return [Section("hvp_timings", f"hvp timing {w}",
                    lambda w=w: measure(device, min(repeats, 10), small=small, workloads=(w,)),
                    {"workload": w, "dtype": "float32", **tf32})
            for w in WORKLOADS]
