"""Unlearning methods behind one call: `unlearn(model, splits, method, mask=None, config=None)`.

Each method's hyperparameters live in one dataclass whose defaults suit the built-in digits
scale; the comments give the ranges the paper (Jia et al., NeurIPS 2023, appendix) tuned on
CIFAR-10 / ResNet-18. With `mask`, every update goes through `MaskedSGD`, so pruned weights stay
exactly zero ("prune first, then unlearn").
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from trustfast._meta import TrustfastWarning
from trustfast.checks import check_choice, check_number, shown
from trustfast.config import Config
from trustfast.models.fit import SGDConfig
from trustfast.optim import MaskedSGD
from trustfast.sparsity import check_masks, check_module
from trustfast.unlearn.pruning import Masks, apply_masks
from trustfast.unlearn.splits import Splits, check_dataset, check_splits

METHODS = ("retrain", "ft", "ga", "rl", "ff", "iu", "l1_sparse", "salun")


@dataclass
class TrainConfig(SGDConfig):
    """SGD settings shared by the training-based methods."""

    # passes over the data (paper: FT/RL/l1-sparse 10 against Retrain's 182; here 5 against 40
    # keeps the paper's >= 3x run-time gap, and l1-sparse still reaches Retrain's UA on digits)
    epochs: int = 5
    lr: float = 0.05  # SGD step size (paper: 0.01-0.1 for FT/RL/l1-sparse, 1e-5-1e-4 for GA)
    seed: int = 0  # data order and random labels

    def check(self) -> None:
        super().check()
        self.at_least("seed", 0)


@dataclass
class RetrainConfig(TrainConfig):
    """Retrain from scratch on the retain set (the exact-unlearning reference)."""

    epochs: int = 40  # the paper retrains for 182 epochs against FT's 10


@dataclass
class GAConfig(TrainConfig):
    """Gradient ascent on the forget set."""

    epochs: int = 3
    lr: float = 1e-3


@dataclass
class RLConfig(TrainConfig):
    """Random labels: each epoch, the forget set with random wrong labels, then a retain pass."""

    lr: float = 0.01  # 0.05 left RA at 50 % after 5 epochs on digits (0.01: 99.2 %), measured


@dataclass
class L1SparseConfig(TrainConfig):
    """FT plus alpha_t ||theta||_1, alpha_t decaying linearly from `l1` to 0 over the epochs."""

    # initial l1 strength gamma (paper: 5e-5-1e-4 for ResNet-18 / CIFAR-10; a SmallCNN on digits
    # over 5 epochs needs 3e-3: class-wise UA 96.7 / RA 99.1 vs 68 at 2e-3, measured)
    l1: float = 3e-3

    def check(self) -> None:
        super().check()
        self.at_least("l1", 0)


@dataclass
class FFConfig(Config):
    """Fisher forgetting: diagonal Fisher F on retain, theta += N(0, min(alpha / F, cap))."""

    alpha: float = 1e-6  # noise scale (paper: 1e-9-1e-6)
    max_variance: float = 1e-3  # cap on alpha / F where the Fisher is ~0
    samples: int | None = 512  # retain samples for the Fisher (None = all)
    batch_size: int = 64
    seed: int = 0

    def check(self) -> None:
        self.at_least("alpha", 0, strict=True)
        self.at_least("max_variance", 0, strict=True)
        if self.samples is not None:
            self.at_least("samples", 1)
        self.at_least("batch_size", 1)
        self.at_least("seed", 0)


@dataclass
class IUConfig(Config):
    """Influence unlearning: theta -= alpha F^-1 grad L_retain(theta), one Newton step toward the
    retain-only optimum with the empirical Fisher F = damping I + mean_i g_i g_i^T of `samples`
    per-sample retain gradients as the Hessian (WoodFisher). At the full-data optimum this is
    the influence-function update theta += (n_f / n_r) F^-1 grad L_forget."""

    alpha: float = 0.1  # step scale (paper: 1-20 at CIFAR scale; 1.0 wrecks a digits CNN)
    samples: int = 256  # per-sample retain gradients in F (memory: samples x params)
    damping: float = 1e-2  # lambda in F = lambda I + G^T G / n; separate from `samples`
    # how F^-1 v is computed: "woodfisher" (the paper's recursive rank-1 Sherman-Morrison
    # updates) or "woodbury" (the same F^-1 v through one n x n solve; 15x faster at n = 1000
    # on SmallCNN gradients, benchmarks/test_bench_unlearn.py)
    inverse: str = "woodfisher"
    batch_size: int = 64
    seed: int = 0

    def check(self) -> None:
        self.at_least("alpha", 0, strict=True)
        self.at_least("samples", 1)
        self.at_least("damping", 0, strict=True)
        self.choice("inverse", ("woodfisher", "woodbury"))
        self.at_least("batch_size", 1)
        self.at_least("seed", 0)


@dataclass
class SalUnConfig(TrainConfig):
    """SalUn (Fan et al., ICLR 2024): saliency mask = top `saliency` fraction of |grad of the
    forget loss|, then RL restricted to that mask."""

    saliency: float = 0.5  # fraction of weights updated
    lr: float = 0.01

    def check(self) -> None:
        super().check()
        self.within("saliency", 0, 1, low_open=True)


CONFIGS = {"retrain": RetrainConfig, "ft": TrainConfig, "ga": GAConfig, "rl": RLConfig,
           "ff": FFConfig, "iu": IUConfig, "l1_sparse": L1SparseConfig, "salun": SalUnConfig}


@dataclass
class UnlearnResult:
    method: str
    seconds: float
    config: dict = field(default_factory=dict)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _loader(data: Dataset, cfg, shuffle: bool = True) -> DataLoader:
    gen = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=shuffle, generator=gen)


def _optimizer(model: nn.Module, cfg: TrainConfig, mask: Masks | None, l1: float = 0.0):
    return MaskedSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, l1=l1, masks=mask, module=model)


def _epochs(n: int, desc: str):
    """One progress bar per method, over its epochs."""
    return tqdm(range(n), desc=desc, leave=False)


def _pass(model, loader, opt, loss_fn: Callable) -> None:
    """One epoch of SGD steps. A batch whose loss is NaN/Inf (NaN inputs, a diverged model) is
    skipped with a TrustfastWarning, and the floating buffers (batch-norm running statistics)
    its forward pass changed are put back, so nothing non-finite reaches the model; NaN/Inf
    gradients and updates are MaskedSGD's to skip."""
    model.train()
    device = _device(model)
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    for x, y in loader:
        saved = [b.clone() for b in buffers]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device)), y.to(device))
        if not bool(torch.isfinite(loss)):
            with torch.no_grad():
                for b, old in zip(buffers, saved):
                    b.copy_(old)
            warnings.warn("unlearn: a batch gave a NaN/Inf loss (NaN/Inf in the data, or the "
                          "model diverged); its step was skipped", TrustfastWarning,
                          stacklevel=3)
            continue
        loss.backward()
        opt.step()


def _ce(out, y):
    return fn.cross_entropy(out, y)


def _finetune(model, data, cfg: TrainConfig, mask, desc, loss_fn=_ce, l1_schedule=None):
    opt = _optimizer(model, cfg, mask)
    loader = _loader(data, cfg)
    for epoch in _epochs(cfg.epochs, desc):
        if l1_schedule is not None:
            for group in opt.param_groups:
                group["l1"] = l1_schedule(epoch)
        _pass(model, loader, opt, loss_fn)


def _retrain(model, splits, mask, cfg: RetrainConfig):
    torch.manual_seed(cfg.seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    if mask is not None:
        apply_masks(model, mask)
    _finetune(model, splits.retain, cfg, mask, "retrain")


def _ga(model, splits, mask, cfg: GAConfig):
    _finetune(model, splits.forget, cfg, mask, "GA", loss_fn=lambda out, y: -_ce(out, y))


def _random_labels(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    offset = torch.randint(1, num_classes, y.shape, generator=gen)
    return (y.cpu() + offset) % num_classes


def _num_classes(model, data) -> int:
    x, _ = data[0]
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(x.unsqueeze(0).to(_device(model)))
        model.train(was)
    return out.shape[1]


def _rl(model, splits, mask, cfg: RLConfig | SalUnConfig, desc="RL"):
    """Each epoch: a pass on the forget set with random wrong labels, then a retain pass."""
    opt = _optimizer(model, cfg, mask)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_classes = _num_classes(model, splits.forget)
    forget, retain = _loader(splits.forget, cfg), _loader(splits.retain, cfg)
    for _ in _epochs(cfg.epochs, desc):
        _pass(model, forget, opt,
              lambda out, y: _ce(out, _random_labels(y, n_classes, gen).to(out.device)))
        _pass(model, retain, opt, _ce)


def _per_sample_grads(model: nn.Module, data: Dataset, batch_size: int, limit: int | None,
                      seed: int):
    """Yield flattened per-sample gradients of the cross-entropy (torch.func vmap)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return fn.cross_entropy(out, y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    if limit is not None:
        order = order[:limit]
    device = _device(model)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].tolist()
        xs = torch.stack([data[i][0] for i in idx]).to(device)
        ys = torch.as_tensor([int(data[i][1]) for i in idx], device=device)
        g = per_sample(params, xs, ys)
        yield torch.cat([g[k].flatten(1) for k in params], dim=1)


def _mean_grad(model, data, batch_size) -> torch.Tensor:
    """Flattened gradient of the mean cross-entropy over `data` (batched backward passes)."""
    model.zero_grad(set_to_none=True)
    device = _device(model)
    for x, y in DataLoader(data, batch_size=batch_size):
        fn.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return flat / len(data)


def _finite_update(method: str, delta: torch.Tensor) -> torch.Tensor:
    """`delta` if every entry is finite, else a ValueError before anything is written."""
    if not bool(torch.isfinite(delta).all()):
        raise ValueError(f"{method}: the weight update has {int((~torch.isfinite(delta)).sum())} "
                         f"NaN/Inf entries (a degenerate Fisher / Hessian, NaN/Inf in the data, "
                         f"or an overflow: raise config.damping, lower config.alpha); the model "
                         f"was not changed")
    return delta


@torch.no_grad()
def _add_flat(model, delta: torch.Tensor, mask: Masks | None) -> None:
    start = 0
    named = dict(model.named_parameters())
    for name, p in named.items():
        step = delta[start:start + p.numel()].view_as(p).to(p.dtype)
        if mask is not None and name in mask:
            step = step * mask[name]
        p.add_(step)
        start += p.numel()


def _ff(model, splits, mask, cfg: FFConfig):
    model.eval()
    fisher, n = None, 0
    for g in _per_sample_grads(model, splits.retain, cfg.batch_size, cfg.samples, cfg.seed):
        s = (g**2).sum(0)
        fisher = s if fisher is None else fisher + s
        n += g.shape[0]
    fisher = fisher / n
    if not bool(torch.isfinite(fisher).all()):
        # NaN per-sample gradients (NaN retain inputs, or a model whose outputs are NaN): the
        # noise scale alpha / F would be NaN in those weights
        raise ValueError(f"FF: the Fisher diagonal of the retain set has "
                         f"{int((~torch.isfinite(fisher)).sum())} NaN/Inf entries (NaN/Inf in "
                         f"splits.retain or in the model's outputs); the model was not changed")
    # F ~ 0 (a degenerate Fisher: dead units, saturated softmax) gives alpha / 1e-8, which the
    # max_variance cap bounds, so the noise is always finite
    variance = (cfg.alpha / (fisher + 1e-8)).clamp(max=cfg.max_variance)
    gen = torch.Generator(device=fisher.device).manual_seed(cfg.seed)
    noise = torch.randn(fisher.shape, generator=gen, device=fisher.device, dtype=fisher.dtype)
    _add_flat(model, _finite_update("FF", variance.sqrt() * noise), mask)


def _check_inverse_args(grads, v, damping) -> float:
    from trustfast.checks import FLOATING, check_tensor

    grads = check_tensor("grads", grads, dtypes=FLOATING, ndim=2, nonempty=True)
    check_tensor("v", v, dtypes=(grads.dtype,), shape=(grads.shape[1],), device=grads.device)
    return float(check_number("damping", damping, low=0.0, low_open=True))


def woodfisher_inverse_product(grads: torch.Tensor, v: torch.Tensor,
                               damping: float) -> torch.Tensor:
    """F^-1 v for F = damping I + G^T G / n (G: n x d per-sample gradients), by n exact
    Sherman-Morrison rank-1 updates (Singh & Alistarh, NeurIPS 2020). O(n^2 d) time, O(n d)
    memory; never forms a d x d matrix."""
    damping = _check_inverse_args(grads, v, damping)
    n, d = grads.shape
    # rows u_j = F_(j-1)^-1 g_j / sqrt(n + g_j . F_(j-1)^-1 g_j), so that
    # F_j^-1 = F_(j-1)^-1 - u_j u_j^T; each update is two matrix-vector products with the rows
    # so far (a Python loop over previous rows took 1.5 s for 256 SmallCNN gradients).
    u = torch.zeros(n, d, dtype=grads.dtype, device=grads.device)
    for j in range(n):
        g = grads[j]
        f_inv_g = g / damping - u[:j].T @ (u[:j] @ g)
        u[j] = f_inv_g / torch.sqrt(n + g @ f_inv_g)
    return v / damping - u.T @ (u @ v)


def woodbury_inverse_product(grads: torch.Tensor, v: torch.Tensor,
                             damping: float) -> torch.Tensor:
    """F^-1 v for F = damping I + G^T G / n by the Woodbury identity:
    v / damping - G^T (n damping I + G G^T)^-1 G v / damping. Equal to
    `woodfisher_inverse_product` up to rounding; one n x n solve instead of n rank-1 updates."""
    damping = _check_inverse_args(grads, v, damping)
    n = grads.shape[0]
    small = n * damping * torch.eye(n, dtype=grads.dtype, device=grads.device) + grads @ grads.T
    return v / damping - grads.T @ torch.linalg.solve(small, grads @ v) / damping


def _iu(model, splits, mask, cfg: IUConfig):
    model.eval()
    retain_grad = _mean_grad(model, splits.retain, cfg.batch_size)
    grads = torch.cat(list(_per_sample_grads(model, splits.retain, cfg.batch_size, cfg.samples,
                                             cfg.seed)))
    check_choice("config.inverse", cfg.inverse, ("woodfisher", "woodbury"))
    inverse = woodfisher_inverse_product if cfg.inverse == "woodfisher" else (
        woodbury_inverse_product)
    delta = inverse(grads, retain_grad, cfg.damping)
    _add_flat(model, _finite_update("IU", -cfg.alpha * delta), mask)


def _l1_sparse(model, splits, mask, cfg: L1SparseConfig):
    _finetune(model, splits.retain, cfg, mask, "l1-sparse",
              l1_schedule=lambda epoch: cfg.l1 * (1 - epoch / cfg.epochs))


def saliency_mask(model: nn.Module, forget: Dataset, fraction: float,
                  batch_size: int = 64) -> Masks:
    """SalUn's weight saliency: keep the `fraction` (in (0, 1]) of weights with the largest
    |grad| of the forget loss (global threshold over all parameters); a NaN/Inf gradient is a
    ValueError."""
    check_module("model", model)
    check_dataset("forget", forget)
    fraction = float(check_number("fraction", fraction, low=0.0, high=1.0, low_open=True))
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    if len(forget) == 0:
        raise ValueError("forget must not be empty")
    model.zero_grad(set_to_none=True)
    device = _device(model)
    for x, y in DataLoader(forget, batch_size=batch_size):
        fn.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
    scores = {k: p.grad.abs() for k, p in model.named_parameters() if p.grad is not None}
    if not scores:
        raise ValueError("model has no parameter with a gradient of the forget loss")
    flat = torch.cat([s.flatten() for s in scores.values()])
    if not bool(torch.isfinite(flat).all()):
        model.zero_grad(set_to_none=True)
        raise ValueError("saliency: the forget-loss gradient has NaN/Inf entries (NaN/Inf in "
                         "forget or in the model's outputs); no saliency can be ranked")
    k = max(1, int(round(fraction * flat.numel())))
    threshold = torch.topk(flat, k).values.min()
    model.zero_grad(set_to_none=True)
    return {name: s >= threshold for name, s in scores.items()}


def _salun(model, splits, mask, cfg: SalUnConfig):
    sal = saliency_mask(model, splits.forget, cfg.saliency, cfg.batch_size)
    if mask is not None:
        sal = {k: m & mask[k] if k in mask else m for k, m in sal.items()}
        sal.update({k: m for k, m in mask.items() if k not in sal})
    _rl(model, splits, sal, cfg, desc="SalUn")


_RUNNERS = {"retrain": _retrain, "ft": lambda m, s, k, c: _finetune(m, s.retain, c, k, "FT"),
            "ga": _ga, "rl": _rl, "ff": _ff, "iu": _iu, "l1_sparse": _l1_sparse, "salun": _salun}


def unlearn(model: nn.Module, splits: Splits, method: str, mask: Masks | None = None,
            config=None) -> UnlearnResult:
    """Unlearn `splits.forget` from `model` in place with `method` (one of METHODS).

    `mask` (bool per parameter name, True = kept, or 0/1 floats; exactly each parameter's
    shape) keeps pruned weights at exactly zero; `config` is the method's dataclass (see
    CONFIGS; default: its defaults), checked again here so a field changed in place after
    creation is refused too. Returns the wall-clock seconds (RTE) and the config used.

    What is refused (TypeError / ValueError naming the argument, before the model is touched):
    a model that is not an nn.Module or holds NaN/Inf weights, splits that are not `Splits` of
    map-style datasets or have an empty forget / retain set, an unknown method, a config of
    another method or with a value out of range, a mask of the wrong name, shape, dtype or
    values. Nothing non-finite is written into the model: a training step with a NaN/Inf
    loss is skipped with a TrustfastWarning (the batch-norm statistics it touched are put
    back), one with a NaN/Inf gradient or update too (MaskedSGD's policy); FF / IU refuse a NaN/Inf
    update (a degenerate Fisher / Hessian) with a ValueError and leave the model unchanged;
    and if a method still ends with NaN/Inf weights or buffers, the state it started from is
    restored and a ValueError is raised; so is it when a method raises mid-way. That restore
    keeps one copy of the model's state during the call.
    """
    check_module("model", model)
    check_splits(splits)
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {METHODS}, got {shown(method)}")
    check_choice("method", method, METHODS)
    cfg = config if config is not None else CONFIGS[method]()
    if not isinstance(cfg, CONFIGS[method]):
        raise TypeError(f"config for {method!r} must be {CONFIGS[method].__name__}, got "
                        f"{type(cfg).__name__}")
    cfg.validate()
    if len(splits.forget) == 0 or len(splits.retain) == 0:
        raise ValueError(f"splits.forget and splits.retain must be non-empty, got "
                         f"{len(splits.forget)} and {len(splits.retain)} samples")
    if mask is not None:
        mask = check_masks("mask", mask, dict(model.named_parameters()))
    _check_finite_state(model, "model")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    try:
        _RUNNERS[method](model, splits, mask, cfg)
    except BaseException:
        model.load_state_dict(saved)  # an error mid-way leaves the model as it came
        raise
    if mask is not None:
        apply_masks(model, mask)
    try:
        _check_finite_state(model, f"unlearn({method!r})'s result")
    except ValueError as err:
        model.load_state_dict(saved)
        raise ValueError(f"{err}: the run diverged (lower config.lr / config.alpha); the model "
                         f"was restored to its weights before the call") from None
    return UnlearnResult(method, time.perf_counter() - start, asdict(cfg))


def _check_finite_state(model: nn.Module, what: str) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} has NaN/Inf values in {name} "
                             f"({int((~torch.isfinite(t)).sum())} of {t.numel()})")
